"""The findings stage: the paired bootstrap and its verdicts, the claims of findings.yaml against the evidence grid,
and the stage end to end on a made-up workspace (metrics, predictions and a tiny tokenized dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import findings as stage
from unipeft_bench import findings, grid_results, metrics

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "conf" / "grid" / "evidence.yaml"


# ---- the bootstrap --------------------------------------------------------------------------------------------------
def coin_flips(probability: float, seeds: int = 3, size: int = 400, offset: int = 0) -> list[np.ndarray]:
    """Per-seed 0/1 per-example scores, as accuracy gives them."""
    return [(np.random.default_rng(offset + s).random(size) < probability).astype(float)[:, None]
            for s in range(seeds)]


def bootstrap(favoured, other) -> findings.Effect:
    return findings.paired_bootstrap(favoured, other, findings.mean_score(favoured[0].shape[0]), resamples=2000)


def test_a_known_effect_holds_and_its_reverse_is_contradicted():
    better, worse = coin_flips(0.8), coin_flips(0.6, offset=10)
    effect = bootstrap(better, worse)
    assert 10 < effect.difference < 30 and effect.low > 0
    assert effect.low < effect.difference < effect.high
    assert findings.verdict(effect, 0.0) == findings.HOLDS
    reverse = bootstrap(worse, better)
    assert reverse.difference == pytest.approx(-effect.difference)
    assert findings.verdict(reverse, 0.0) == findings.CONTRADICTED


def test_no_effect_is_inconclusive():
    scores = coin_flips(0.7)
    # the same per-seed scores in another order: no difference of means at all, but example-level noise
    shuffled = [np.random.default_rng(99).permutation(s) for s in scores]
    effect = bootstrap(scores, shuffled)
    assert effect.difference == pytest.approx(0.0, abs=1e-9)
    assert effect.low < 0 < effect.high
    assert findings.verdict(effect, 0.0) == findings.INCONCLUSIVE


def test_per_seed_differences_and_a_margin():
    better, worse = coin_flips(0.8), coin_flips(0.6, offset=10)
    effect = bootstrap(better, worse)
    expected = [100 * (a.mean() - b.mean()) for a, b in zip(better, worse)]
    assert effect.per_seed == pytest.approx(expected)
    assert effect.difference == pytest.approx(np.mean(expected))
    # "close": at most `margin` below; a gap of 1 point whose interval lies within 2 points holds
    close = findings.Effect(-1.0, -1.8, -0.2, (-1.0,))
    assert findings.verdict(close, -2.0) == findings.HOLDS
    assert findings.verdict(close, -1.5) == findings.INCONCLUSIVE
    assert findings.verdict(close, 0.0) == findings.CONTRADICTED


def test_one_seed_that_alone_disagrees_leaves_the_comparison_inconclusive():
    # Two seeds favour the first run by ~20 points; on the third it collapsed (45%) and lost ~15. The mean over
    # seeds is clearly positive and resampling the examples alone would say it holds; resampling the seeds too
    # draws the collapsed one 0-3 times, and the interval spans both signs.
    better, worse = coin_flips(0.8), coin_flips(0.6, offset=10)
    favoured = better[:2] + coin_flips(0.45, seeds=1, offset=20)
    effect = bootstrap(favoured, worse)
    assert min(effect.per_seed[:2]) > 10 and effect.per_seed[2] < -5 and effect.difference > 5
    assert effect.low < 0 < effect.high
    assert findings.verdict(effect, 0.0) == findings.INCONCLUSIVE
    counts = findings.resample_counts(400, 2000)
    examples_only = np.mean([counts @ (a - b)[:, 0] / 4 for a, b in zip(favoured, worse)], axis=0)
    assert np.percentile(examples_only, 2.5) > 0


def test_the_bootstrap_is_deterministic():
    better, worse = coin_flips(0.8), coin_flips(0.6, offset=10)
    assert bootstrap(better, worse) == bootstrap(better, worse)


def test_claim_verdicts_combine_as_a_universal_claim():
    h, c, i = findings.HOLDS, findings.CONTRADICTED, findings.INCONCLUSIVE
    assert findings.claim_verdict([h, h]) == h
    assert findings.claim_verdict([h, i]) == i
    assert findings.claim_verdict([h, c, i]) == c
    assert findings.claim_verdict([]) == findings.NOT_RUN


def test_resampled_bleu_is_sacrebleus_corpus_bleu():
    import sacrebleu

    hypotheses = ["the cat sat on the mat", "a dog barked", "it rains today in the city", "hello there"]
    references = ["the cat sat on a mat", "the dog barked loudly", "it rains in the city today", "hello there"]
    scorer = findings.bleu_scorer(references, paper_convention=False)
    statistics = scorer.statistics(hypotheses)
    assert scorer.score(statistics.sum(0, keepdims=True))[0] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [references]).score)
    twice = scorer.score(2 * statistics[[0]] + statistics[[2]])[0]  # a resample: example 0 twice, example 2 once
    picked = [hypotheses[0], hypotheses[0], hypotheses[2]]
    assert twice == pytest.approx(sacrebleu.corpus_bleu(picked, [[references[0], references[0], references[2]]]).score)


def test_romanian_bleu_is_the_papers_convention():
    from unipeft_bench.romanian import paper_bleu

    hypotheses = ["Aceasta este o casă frumoasă.", "Ştiu că vine mâine, nu?"]
    references = ["Aceasta este o casa foarte frumoasa.", "Știu că el vine mâine."]
    scorer = findings.bleu_scorer(references, paper_convention=True)
    score = scorer.score(scorer.statistics(hypotheses).sum(0, keepdims=True))[0]
    assert score == pytest.approx(paper_bleu(hypotheses, references)["bleu_paper"], abs=0.006)


# ---- the claims and the evidence grid -------------------------------------------------------------------------------
def test_the_papers_numbers_for_a_comparison():
    pa, sa = ({"method": method, "sizes": {"attn": None, "ffn": 200, "scale": None}} for method in ("pa", "sa_ffn"))
    scorer = findings.accuracy_scorer([0, 1], "accuracy")
    assert findings.paper_numbers(findings.Split("translation", "test", ("a",), scorer), pa, sa, "Table 3") == (
        36.4, 35.6)
    assert findings.paper_numbers(findings.Split("summarization", "test", ("a",), scorer), pa, sa, "Table 3") == (
        20.66, 19.98)
    mnli = {"method": "lora", "sizes": {"attn": 16, "ffn": None, "scale": 2.0}}
    assert findings.paper_numbers(findings.Split("nli", "test", ("a",), scorer), mnli, mnli, "Table 2") == (87.2, 87.2)
    # the paper reports MNLI matched only, and nothing for a size it did not run
    assert findings.paper_numbers(findings.Split("nli", "test_mismatched", ("a",), scorer), mnli, mnli, "") is None
    odd = {"method": "pa", "sizes": {"attn": None, "ffn": 7, "scale": None}}
    assert findings.paper_numbers(findings.Split("translation", "test", ("a",), scorer), odd, sa, "") is None


def test_every_claim_names_runs_of_the_evidence_grid():
    runs = yaml.safe_load(EVIDENCE.read_text())["grid"]["runs"]
    claims = findings.load_claims()
    assert len(claims) >= 10
    for claim in claims:
        missing = [run for run in claim.runs if run not in runs]
        assert not missing, f"{claim.id}: {missing} are not runs of conf/grid/evidence.yaml"


@pytest.mark.parametrize("profile", ["offline", "real"])
def test_the_evidence_grids_run_every_claim(profile):
    """Composed as `dvc exp run -S grid=evidence` (and evidence_generation) would: every claim is tested in one of
    the two grids, and a grid that has a claim's task has all its runs."""
    from test_grids import composed

    grids = [grid_results.read_grid(composed(f"grid={name}", f"profile={profile}"))
             for name in ("evidence", "evidence_generation")]
    assert [len(grid.seeds) for grid in grids] == ([3, 2] if profile == "offline" else [3, 3])
    for claim in findings.load_claims():
        testing = [grid for grid in grids if claim.task_names(grid)]
        assert testing, f"{claim.id}: no evidence grid has its task"
        for grid in testing:
            assert set(claim.runs) <= set(grid.runs), (claim.id, grid.name)
    generation = next(grid for grid in grids if grid.name == "evidence_generation")
    tested = [c.id for c in findings.load_claims() if c.task_names(generation)]
    assert "classification_close_to_full" not in tested and len(tested) == 9  # every generation claim


def test_a_malformed_claim_is_a_one_line_error(tmp_path):
    path = tmp_path / "findings.yaml"
    path.write_text(yaml.safe_dump({"claims": [{"id": "x", "claim": "c", "paper": "Table 3", "tasks": "generation",
                                                "expect": "close", "pairs": [["a", "b"]], "note": "n"}]}))
    with pytest.raises(findings.DataError, match="needs a numeric margin"):
        findings.load_claims(path)


# ---- the stage on a made-up workspace -------------------------------------------------------------------------------
SUMMARIES = ["the package provides a tool for images", "library for parsing json files quickly",
             "documentation of the python module", "a small game with many levels", "fonts for the desktop"] * 6
GARBLED = ["levels desktop quickly many", "images the of tool", "json module game", "fonts python for",
           "a with parsing"] * 6
SENTIMENT_LABELS = [i % 2 for i in range(40)]
SIZES = {"full": {}, "pa-200": {"ffn": 200}, "sa_ffn-200": {"ffn": 200}, "pa_attn-200": {"attn": 200},
         "sa_attn-200": {"attn": 200}, "lora-16": {"attn": 16, "scale": 2.0}, "adapter-16": {"attn": 16, "ffn": 16}}
GRID_RUNS = list(SIZES)
SEEDS = [42, 2]


def summaries(run: str, seed: int) -> list[str]:
    """full and pa-200 write the references; sa_ffn-200 and pa_attn-200 garbled text; sa_attn-200 mostly the
    references."""
    if run in ("full", "pa-200") or (run == "sa_attn-200" and seed == 42):
        return SUMMARIES
    if run == "sa_attn-200":
        return SUMMARIES[:20] + GARBLED[20:]
    return GARBLED


def labels_predicted(run: str, seed: int) -> list[int]:
    """full is right everywhere; lora-16 wrong on 2 of 40 (seed 42) and 1 (seed 2), adapter-16 on every other one."""
    lora = {3, 17} if seed == 42 else {3}
    wrong = {"full": set(), "lora-16": lora, "adapter-16": set(range(0, 40, 2))}.get(run, {0, 1})
    return [1 - label if i in wrong else label for i, label in enumerate(SENTIMENT_LABELS)]


def save_tokenized(root: Path) -> None:
    from datasets import Dataset, DatasetDict
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for text in SUMMARIES + GARBLED for word in text.split()})
    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                         unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    ids = [tokenizer(text)["input_ids"] for text in SUMMARIES]
    longest = max(map(len, ids))
    labels = [row + [-100] * (longest - len(row)) for row in ids]  # -100 pads labels, as the tokenize stage's
    summarization = root / "data/tokenized/summarization"
    # documents that open with a garbled sentence: the first-sentence baseline scores far below full fine-tuning
    sources = [f"{garbled}. {summary}." for garbled, summary in zip(GARBLED, SUMMARIES)]
    test = Dataset.from_dict({"id": [f"s{i}" for i in range(len(ids))], "labels": labels, "source": sources})
    DatasetDict({"test": test}).save_to_disk(str(summarization))
    tokenizer.save_pretrained(str(summarization / "tokenizer"))
    DatasetDict({"train": Dataset.from_dict({"id": ["t0", "t1", "t2"], "labels": [1, 1, 0]}),  # majority: 1
                 "test": Dataset.from_dict({"id": [f"r{i}" for i in range(40)], "labels": SENTIMENT_LABELS})}
                ).save_to_disk(str(root / "data/tokenized/sentiment"))


def write_run(root: Path, task: str, run: str, seed: int, predicted: list | None = None) -> None:
    """The evaluate stage's two files, its scores computed by the evaluate stage's own functions."""
    if task == "summarization":
        predicted = summaries(run, seed) if predicted is None else predicted
        scores, ids = metrics.rouge(predicted, SUMMARIES), [f"s{i}" for i in range(len(predicted))]
    else:
        predicted = labels_predicted(run, seed)
        correct = sum(p == label for p, label in zip(predicted, SENTIMENT_LABELS))
        scores, ids = {"accuracy": round(100 * correct / len(predicted), 2)}, [f"r{i}" for i in range(40)]
    method = run.split("-")[0]
    report = {"task": task, "profile": "real", "run": run, "method": method, "seed": seed,
              "sizes": {"attn": None, "ffn": None, "scale": None, **SIZES[run]}, "scores": scores,
              "params": {"paper_percent": 1.0}}
    metrics_file, predictions_file = (grid_results.metrics_path(root, task, run, seed),
                                      grid_results.predictions_path(root, task, run, seed))
    for path in (metrics_file, predictions_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(report))
    records = [{"split": "test", "id": i, "prediction": p} for i, p in reversed(list(zip(ids, predicted)))]
    predictions_file.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workspace")
    save_tokenized(root)
    grid = {"name": "made_up", "results": "results/made_up", "seeds": SEEDS, "generation": ["summarization"],
            "classification": ["sentiment"], "runs": {run: {"method": run.split("-")[0]} for run in GRID_RUNS}}
    (root / "params.yaml").write_text(yaml.safe_dump({"profile": "real", "grid": grid}, sort_keys=False))
    for task in ("summarization", "sentiment"):
        for run in GRID_RUNS:
            for seed in SEEDS:
                write_run(root, task, run, seed)
    return root


def run_stage(root: Path, monkeypatch) -> int:
    monkeypatch.chdir(root)
    return stage.main()


def test_the_stage_writes_verdicts_for_the_runs_the_grid_has(workspace, monkeypatch, capsys):
    assert run_stage(workspace, monkeypatch) == 0
    results = workspace / "results/made_up"
    data = json.loads((results / "findings.json").read_text())
    claims = data["claims"]
    # PA beats SA at the FFN (references against garbled text), not clearly at attention
    parallel = claims["parallel_beats_sequential"]["comparisons"]
    assert parallel["summarization pa-200 vs sa_ffn-200"]["verdict"] == findings.HOLDS
    assert parallel["summarization pa_attn-200 vs sa_attn-200"]["verdict"] == findings.CONTRADICTED
    assert claims["parallel_beats_sequential"]["verdict"] == findings.CONTRADICTED
    assert parallel["summarization pa-200 vs sa_ffn-200"]["per_seed"] == {"42": 100.0, "2": 100.0}
    # classification: lora-16 is 5 and 2.5 points below full, too few examples to tell; adapter-16 50 below
    close = claims["classification_close_to_full"]
    assert close["comparisons"]["sentiment lora-16 vs full"]["per_seed"] == {"42": -5.0, "2": -2.5}
    assert close["comparisons"]["sentiment lora-16 vs full"]["verdict"] == findings.INCONCLUSIVE
    assert close["comparisons"]["sentiment adapter-16 vs full"]["difference"] == -50.0
    assert close["comparisons"]["sentiment adapter-16 vs full"]["verdict"] == findings.CONTRADICTED
    assert close["needs"] == "runs prefix-32, mam_glue-16"
    assert set(close["comparisons"]) == {"sentiment lora-16 vs full", "sentiment adapter-16 vs full"}
    # claims whose runs the grid lacks
    assert claims["gating_helps"] == {"verdict": findings.NOT_RUN,
                                      "needs": "runs prefix-30, prefix_nogate-30; the translation task",
                                      "comparisons": {}}
    assert data["counts"]["not_run_in_this_grid"] == sum(c["verdict"] == findings.NOT_RUN for c in claims.values())
    text = (results / "findings.md").read_text()
    assert "| summarization | pa-200 > sa_ffn-200 | +100.00 | [+100.00, +100.00] | +100.00 / +100.00 | holds |" in text
    assert "lora-16 ≥ full − 1.5" in text
    assert "needs runs prefix-30, prefix_nogate-30" in text
    assert "parallel_beats_sequential: contradicted" in capsys.readouterr().out


def test_the_stage_is_deterministic(workspace, monkeypatch):
    assert run_stage(workspace, monkeypatch) == 0
    first = (workspace / "results/made_up/findings.json").read_bytes()
    assert run_stage(workspace, monkeypatch) == 0
    assert (workspace / "results/made_up/findings.json").read_bytes() == first


def test_the_papers_numbers_sit_beside_ours(workspace):
    text = (workspace / "results/made_up/findings.md").read_text()
    assert ("| pa-200 > sa_ffn-200 | +100.00 | [+100.00, +100.00] | +100.00 / +100.00 | holds "
            "| 20.66 vs 19.98 (+0.68) |") in text
    assert ("| lora-16 ≥ full − 1.5 | -3.75 | [-10.00, +0.00] | -5.00 / -2.50 | inconclusive "
            "| 94.2 vs 94.6 (-0.40) |") in text
    claims = json.loads((workspace / "results/made_up/findings.json").read_text())["claims"]
    assert claims["parallel_beats_sequential"]["comparisons"]["summarization pa-200 vs sa_ffn-200"][
        "paper_difference"] == 0.68


def test_offline_the_generation_claims_are_tested_on_summarization_and_sentiment(workspace, monkeypatch, tmp_path):
    """findings.yaml's offline tasks: the claims the paper shows on generation on both stand-ins (SmolLM2's
    summarization and MiniLM's sentiment), each grid on those it has; the gap on generation on summarization."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("results"))
    for path in [root / "params.yaml", *root.glob("metrics/*/*/*.json")]:
        path.write_text(path.read_text().replace('"profile": "real"', '"profile": "offline"').replace(
            "profile: real", "profile: offline"))
    assert run_stage(root, monkeypatch) == 0
    data = json.loads((root / "results/made_up/findings.json").read_text())
    claims = data["claims"]
    assert set(claims["parallel_beats_sequential"]["comparisons"]) == {
        "summarization pa-200 vs sa_ffn-200", "summarization pa_attn-200 vs sa_attn-200",
        "sentiment pa-200 vs sa_ffn-200", "sentiment pa_attn-200 vs sa_attn-200"}
    assert claims["generation_gap_to_full"] == {"verdict": findings.NOT_RUN, "needs": "runs sa_ffn-1024, lora-200",
                                                "comparisons": {}}
    # both stand-ins carry claims: full fine-tuning far above the first sentence and the majority class
    assert data["stand_ins"]["summarization"]["carries"] and data["stand_ins"]["sentiment"]["carries"]
    assert data["stand_ins"]["sentiment"] == {"baseline": "majority class", "carries": True, "difference": 50.0,
                                              "low": 35.0, "high": 65.0}
    text = (root / "results/made_up/findings.md").read_text()
    assert "| sentiment | majority class | +50.00 | [+35.00, +65.00] | yes |" in text
    assert "Offline profile: stand-in data" in text


def test_a_stand_in_full_fine_tuning_does_not_clearly_beat_carries_no_claim(workspace, monkeypatch, tmp_path):
    """Full fine-tuning that writes the first sentence's garble: summarization's comparisons become
    inconclusive, whatever their intervals, and the claims say why; sentiment's keep their verdicts."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("results"))
    for seed in SEEDS:
        write_run(root, "summarization", "full", seed, predicted=GARBLED)
    assert run_stage(root, monkeypatch) == 0
    data = json.loads((root / "results/made_up/findings.json").read_text())
    assert not data["stand_ins"]["summarization"]["carries"] and data["stand_ins"]["sentiment"]["carries"]
    parallel = data["claims"]["parallel_beats_sequential"]
    assert parallel["verdict"] == findings.INCONCLUSIVE  # pa-200 > sa_ffn-200 held, by +100, before
    assert parallel["comparisons"]["summarization pa-200 vs sa_ffn-200"]["low"] == 100.0
    assert {c["verdict"] for c in parallel["comparisons"].values()} == {findings.INCONCLUSIVE}
    assert parallel["untestable"].startswith("the summarization stand-in carries no claim: full fine-tuning beats "
                                             "the first sentence baseline by +0.00")
    close = data["claims"]["classification_close_to_full"]["comparisons"]
    assert close["sentiment adapter-16 vs full"]["verdict"] == findings.CONTRADICTED


@pytest.mark.parametrize("missing", ["predictions/summarization/sa_ffn-200/seed2.jsonl",
                                     "metrics/sentiment/lora-16/seed42.json"])
def test_a_missing_file_is_one_line_and_nothing_is_written(workspace, monkeypatch, capsys, tmp_path, missing):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("results"))
    (root / missing).unlink()
    assert run_stage(root, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {missing}: not found")
    assert not (root / "results").exists()


def test_translation_references_are_the_decoded_labels(workspace, tmp_path):
    """The translation path on the summarization data: BLEU recomputed from the statistics is the evaluate stage's."""
    import shutil

    shutil.copytree(workspace / "data/tokenized/summarization", tmp_path / "data/tokenized/translation")
    (split,) = findings.scored_splits("translation", tmp_path, bleu_paper=False)
    assert split.scorer.key == "bleu" and split.ids[:2] == ("s0", "s1")
    predicted = summaries("sa_attn-200", 2)
    statistics = split.scorer.statistics(predicted)
    assert split.scorer.score(statistics.sum(0, keepdims=True))[0] == pytest.approx(
        metrics.bleu(predicted, SUMMARIES)["bleu"], abs=0.006)


def test_a_stale_predictions_file_is_an_error(workspace, monkeypatch, capsys, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("results"))
    write_run(root, "summarization", "sa_ffn-200", 42)
    path = root / "metrics/summarization/sa_ffn-200/seed42.json"
    report = json.loads(path.read_text())
    report["scores"]["rouge2"] += 1.0
    path.write_text(json.dumps(report))
    assert run_stage(root, monkeypatch) == 1
    assert "rerun the evaluate stage" in capsys.readouterr().err
    assert not (root / "results").exists()


def test_a_grid_without_the_claims_task_says_which_it_needs():
    params = {"profile": "real", "grid": {"seeds": [42], "generation": ["summarization"], "classification": [],
                                          "runs": {"prefix-30": {}, "prefix_nogate-30": {}}}}
    _, checked, _ = findings.check(params, Path("/nonexistent"))
    gating = next(c for c in checked if c.claim.id == "gating_helps")
    assert (gating.verdict, gating.needs) == (findings.NOT_RUN, "the translation task")
    close = next(c for c in checked if c.claim.id == "classification_close_to_full")
    assert close.needs == "runs prefix-32, full, lora-16, adapter-16, mam_glue-16; a classification task"


def test_the_default_grid_runs_no_claim_and_reads_nothing(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    grid, checked, stand_ins = findings.check(params, tmp_path)  # an empty directory: no file is needed
    assert grid.name == "default" and stand_ins == {}
    assert {c.verdict for c in checked} == {findings.NOT_RUN}
    assert all(c.needs.startswith("runs ") for c in checked)
