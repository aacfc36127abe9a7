"""A grid's report page: one self-contained HTML file (images inlined, no network) with the findings, their
intervals as a forest plot, the tables, the score-against-budget plots, the validation curves, the runs' settings
and the package versions. It reads what the aggregate and findings stages wrote (tables/, plots/, findings.md,
findings.json under the grid's results directory) and the runs' metrics files; `dvc plots show` keeps its own."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from markdown_it import MarkdownIt

from .errors import DataError
from .figures import forest_png
from .grid_results import Grid, metrics_path, read_grid
from .run_settings import run_settings

VERDICT_CLASSES = {"holds": "holds", "contradicted": "contradicted", "inconclusive": "inconclusive",
                   "not run in this grid": "not-run"}
VERDICT_CELL = re.compile(f"<td>({'|'.join(VERDICT_CLASSES)})</td>")
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; } .lead { color: #555; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 7px; }
th { background: #f4f4f4; } tr:nth-child(even) td { background: #fafafa; }
td.holds { background: #e3f4e4 !important; color: #1b5e20; font-weight: 600; }
td.contradicted { background: #fbe4e4 !important; color: #b71c1c; font-weight: 600; }
td.inconclusive { color: #616161; } td.not-run { color: #9e9e9e; font-style: italic; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 13px; }
"""


def _markdown(text: str) -> str:
    """Markdown to HTML (tables on, raw HTML off), its headings under the page's sections (# → h3), verdict cells
    classed for their colour."""
    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    rendered = re.sub(r"<(/?)h([1-4])>", lambda m: f"<{m.group(1)}h{int(m.group(2)) + 2}>", rendered)
    return VERDICT_CELL.sub(lambda m: f'<td class="{VERDICT_CLASSES[m.group(1)]}">{m.group(1)}</td>', rendered)


def _image(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _read(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the aggregate and findings stages first")
    return path.read_text()


def _settings_table(params: dict, grid: Grid) -> str:
    rows = ["| task | run | method | sizes | seeds | learning rate | steps | batch |",
            "|---|---|---|---|---|---:|---:|---:|"]
    for task in grid.generation + grid.classification:
        for run in grid.runs:
            record = run_settings(params, [task, run])
            first, train = record["runs"][0], record["train"]
            sizes = ", ".join(f"{k}={v}" for k, v in first["budget"].items()) or "the preset's"
            rows.append(f"| {task} | {run} | {first['method']} | {sizes} | {len(record['runs'])} | "
                        f"{train.get('learning_rate', '')} | {train.get('steps') or train.get('epochs', '')} | "
                        f"{train.get('batch_size', '')} |")
    return _markdown("\n".join(rows))


def _versions(grid: Grid, root: Path) -> str:
    """The packages that evaluated the grid's first run here (its metrics file); a grid whose runs were made in
    another workspace (the evidence grids' committed results) may have none here, and says so."""
    paths = [metrics_path(root, task, run, seed) for task in grid.generation + grid.classification
             for run in grid.runs for seed in grid.seeds]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return "<p>No run's metrics file is in this workspace; each records the versions it ran with.</p>"
    versions = json.loads(path.read_text()).get("versions") or {}
    rows = ["| package | version |", "|---|---|"] + [f"| {k} | {v} |" for k, v in versions.items()]
    return _markdown("\n".join(rows) + f"\n\nAs recorded by the evaluate stage in `{path.relative_to(root)}`.")


def build(params: dict, root: Path = Path(".")) -> str:
    """The report page's HTML; reads everything first (a missing input is a DataError naming it)."""
    grid = read_grid(params)
    results = root / grid.results
    findings = json.loads(_read(results / "findings.json"))
    findings_md = _read(results / "findings.md").split("\n", 1)[1]  # its own title is the page's
    tables = [_markdown(_read(path)) for path in sorted((results / "tables").glob("*.md"))]
    tasks = grid.generation + grid.classification
    plots = results / "plots"
    budget = [_image((plots / f"{t}.png").read_bytes(), f"{t}: score against the parameter budget")
              for t in tasks if (plots / f"{t}.png").is_file()]
    curves = [_image((plots / f"{t}_validation.png").read_bytes(), f"{t}: validation score during training, mean "
                     "over seeds") for t in tasks if (plots / f"{t}_validation.png").is_file()]
    forest = forest_png(findings)
    title = grid.title or "Results"
    sections = [
        ("findings", "Findings", _markdown(findings_md) + (_image(forest, "Each comparison's difference with its 95% "
                                                                   "bootstrap interval over seeds and test examples: "
                                                                   "green holds, red contradicted, grey inconclusive")
                                                            if forest else "")),
        ("tables", "Tables", "".join(tables)),
        ("budget", "Score against the parameter budget", "".join(budget)),
        ("curves", "Validation curves", "".join(curves) or "<p>No run logged a validation score.</p>"),
        ("settings", "Run settings", _settings_table(params, grid)),
        ("versions", "Versions", _versions(grid, root)),
    ]
    lead = (f"Grid <code>{html.escape(grid.name)}</code>, {grid.profile} profile, seeds "
            f"{', '.join(map(str, grid.seeds))}: {len(grid.runs)} runs on {', '.join(tasks)}"
            + (f"; the paper's {html.escape(grid.paper)}" if grid.paper else "") + ".")
    nav = " ".join(f'<a href="#{anchor}">{name}</a>' for anchor, name, _ in sections)
    body = "".join(f'<h2 id="{anchor}">{name}</h2>{content}' for anchor, name, content in sections)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1><p class=\"lead\">{lead}</p>"
            f"<nav>{nav}</nav>\n{body}\n</body></html>\n")
