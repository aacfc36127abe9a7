"""DVC stage `findings`: the paper's claims (src/unipeft_bench/findings.yaml), checked on the grid's runs.

    python stages/findings.py

Reads `profile` and `grid` from params.yaml, and for every run a claim compares: metrics/<task>/<run>/seed<seed>.json,
predictions/<task>/<run>/seed<seed>.jsonl and the references in data/tokenized/<task>. Writes, under the grid's
`results` directory (as the aggregate stage): findings.md, one row per claim (its verdict) and one per comparison
(the difference with its 95% interval from a bootstrap over seeds and examples, and per seed), and findings.json,
the same numbers as DVC metrics. A claim whose runs or tasks the grid lacks is "not run in this grid", with what it needs.

Each task a claim is tested on is first checked as a stand-in: full fine-tuning against the task's trivial baseline
(src/unipeft_bench/baselines.py); a task where it does not clearly win carries no claim (its comparisons are
inconclusive, and the claims say why).

Everything is read and computed before anything is written: a missing or stale file gives one line,
`error: <file>: ...`, exit status 1, and no output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unipeft_bench import findings, grid_results, io
from unipeft_bench.last_outputs import stage_failed

VERDICTS = (findings.HOLDS, findings.CONTRADICTED, findings.INCONCLUSIVE, findings.NOT_RUN)
NONE_RAN = "None ran in this grid: each claim's Evidence says what it needs (`-S grid=evidence` has it all)."


def signed(value: float) -> str:
    return f"{value:+.2f}"


def evidence(checked: findings.Checked) -> str:
    """The claims table's summary of the comparisons behind a verdict."""
    ran = [c.verdict for c in checked.comparisons]
    counts = ", ".join(f"{ran.count(v)} {v}" for v in VERDICTS[:3] if v in ran)
    summary = f"{len(ran)} comparison{'s' if len(ran) > 1 else ''}: {counts}" if ran else ""
    lacking = f"needs {checked.needs}" if checked.needs else ""
    return "; ".join(part for part in (summary, lacking, checked.why_untested) if part)


def comparison_row(number: int, claim: findings.Claim, c: findings.Comparison, real: bool) -> list[str]:
    row = [str(number), c.split.label, claim.expectation(c.favoured, c.other), signed(c.effect.difference),
           f"[{signed(c.effect.low)}, {signed(c.effect.high)}]", " / ".join(map(signed, c.effect.per_seed)),
           c.verdict]
    if real:
        row.append("" if c.paper is None else f"{c.paper[0]:g} vs {c.paper[1]:g} ({signed(c.paper[0] - c.paper[1])})")
    return row


def stand_in_rows(grid: grid_results.Grid, stand_ins: dict[str, findings.StandIn]) -> list[list[str]]:
    rows = [["Task", "Baseline", "full − baseline", "95% interval", "Carries claims"]]
    for task, s in stand_ins.items():
        if s.effect is None:
            rows.append([task, s.baseline, "", "", "not checked: the grid has no `full` run"])
        else:
            rows.append([task, s.baseline, signed(s.effect.difference),
                         f"[{signed(s.effect.low)}, {signed(s.effect.high)}]", "yes" if s.carries else "no"])
    return rows


def markdown(grid: grid_results.Grid, checked: list[findings.Checked], stand_ins: dict[str, findings.StandIn]) -> str:
    real = grid.profile == "real"
    verdicts = [c.verdict for c in checked]
    claims = [["#", "Claim", "Paper", "Verdict", "Evidence", "Note"]] + [
        [str(i), c.claim.claim, c.claim.paper, c.verdict, evidence(c), c.claim.note] for i, c in enumerate(checked, 1)]
    comparisons = [["#", "Task", "Expected", "Δ", "95% interval", f"Δ per seed ({', '.join(map(str, grid.seeds))})",
                    "Verdict"] + (["Paper (favoured vs other)"] if real else [])] + [
        comparison_row(i, c.claim, comparison, real)
        for i, c in enumerate(checked, 1) for comparison in c.comparisons]
    notes = [
        f"Δ: the favoured run's score minus the other's (ROUGE-2 F1 × 100, BLEU, accuracy in %), mean over seeds "
        f"{', '.join(map(str, grid.seeds))}; the interval: {findings.RESAMPLES:,} hierarchical paired bootstrap resamples "
        "(each draws the seeds with replacement, a seed's two runs together, and the test examples with "
        f"replacement, one draw for both runs and every seed; fixed seed {findings.BOOTSTRAP_SEED}), recomputing "
        "corpus BLEU on each: a seed that alone disagrees widens the interval rather than deciding the verdict.",
        "A comparison holds when the interval lies entirely above its threshold (0, or −margin for \"close\"), is "
        "contradicted when entirely below, and is inconclusive otherwise; a claim holds when every comparison "
        "holds and is contradicted by any contradicted one.",
        "Paper: its primary score for both runs (src/unipeft_bench/paper_results.yaml), where it prints them."
        if real else "Offline profile: stand-in data and small models, so the paper's numbers are not shown.",
        f"Claims: src/unipeft_bench/findings.yaml; grid `{grid.name}`; the claims' own grids: "
        "`dvc exp run -S grid=evidence aggregate findings` (sentiment) and `-S grid=evidence_generation` "
        "(summarization)."]
    summary = ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS if v in verdicts)
    stand_in = (f"## Stand-ins\n\nA task carries claims when full fine-tuning beats its trivial baseline by more "
                f"than {findings.STAND_IN_MARGIN:g} point (the interval's low end; same bootstrap, the baseline the "
                f"same for every seed); otherwise its comparisons are inconclusive.\n\n"
                f"{table(stand_in_rows(grid, stand_ins))}\n\n" if stand_ins else "")
    return (f"# The paper's findings, checked (grid `{grid.name}`)\n\n{len(checked)} claims: {summary}.\n\n"
            f"{table(claims)}\n\n{stand_in}## Comparisons\n\n"
            f"{table(comparisons) if len(comparisons) > 1 else NONE_RAN}\n\n"
            + "".join(f"- {n}\n" for n in notes))


def table(rows: list[list[str]]) -> str:
    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
    return "\n".join([line(rows[0]), "|" + "|".join("---" for _ in rows[0]) + "|"] + [line(r) for r in rows[1:]])


def metrics(grid: grid_results.Grid, checked: list[findings.Checked], stand_ins: dict[str, findings.StandIn]) -> dict:
    """DVC metrics: verdicts and numbers per claim and comparison (no lists: `dvc metrics` drops them)."""
    verdicts = [c.verdict for c in checked]
    return {"grid": grid.name, "profile": grid.profile, "resamples": findings.RESAMPLES,
            "counts": {v.replace(" ", "_"): verdicts.count(v) for v in VERDICTS},
            "stand_ins": {task: {"baseline": s.baseline, "carries": s.carries, **({} if s.effect is None else {
                "difference": round(s.effect.difference, 4), "low": round(s.effect.low, 4),
                "high": round(s.effect.high, 4)})} for task, s in stand_ins.items()},
            "claims": {c.claim.id: {"verdict": c.verdict, **(
                {"needs": c.needs} if c.needs else {}), **(
                {"untestable": c.why_untested} if c.why_untested else {}), "comparisons": {
                f"{x.split.label} {x.favoured} vs {x.other}": {
                    "difference": round(x.effect.difference, 4), "low": round(x.effect.low, 4),
                    "high": round(x.effect.high, 4), "threshold": c.claim.threshold, "verdict": x.verdict,
                    "per_seed": {str(s): round(d, 4) for s, d in zip(grid.seeds, x.effect.per_seed)},
                    **({"paper_difference": round(x.paper[0] - x.paper[1], 4)} if x.paper else {})}
                for x in c.comparisons}} for c in checked}}


def build(params: dict, root: Path = Path(".")) -> tuple[dict[Path, str], list[str]]:
    grid, checked, stand_ins = findings.check(params, root)
    outputs = {root / grid.results / "findings.md": markdown(grid, checked, stand_ins),
               root / grid.results / "findings.json": json.dumps(metrics(grid, checked, stand_ins), indent=2,
                                                                 ensure_ascii=False) + "\n"}
    return outputs, [f"{c.claim.id}: {c.verdict}" for c in checked]


def main() -> int:
    try:
        outputs, report = build(io.params())
        grid_results.write_outputs(outputs)
    except (Exception, KeyboardInterrupt) as err:
        return stage_failed(err)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
