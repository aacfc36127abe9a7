"""The grid's report page: self-contained HTML with every claim, every plot and the forest plot of the findings'
intervals, built from the committed results of the default and evidence grids; and, where Debian's `chromium` is
installed, rendered by a real browser (the screenshot in docs/ was made by `screenshot` below)."""

from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_grids import composed
from unipeft_bench import figures, report
from unipeft_bench.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = yaml.safe_load((ROOT / "src/unipeft_bench/findings.yaml").read_text())["claims"]


def screenshot(page: Path, png: Path, height: int = 1800) -> None:
    """The page as headless Chromium draws it, 1200 pixels wide."""
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1200,{height}", f"--screenshot={png}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize("grid", ["default", "evidence"])
def test_the_report_has_every_claim_and_every_image_and_nothing_from_outside(grid):
    params = composed(f"grid={grid}")
    page = report.build(params, ROOT)
    for claim in CLAIMS:
        assert html.escape(claim["claim"], quote=False) in page, claim["id"]
    results = ROOT / params["grid"]["results"]
    for png in sorted((results / "plots").glob("*.png")):
        assert base64.b64encode(png.read_bytes()).decode() in page, png.name
    for table in sorted((results / "tables").glob("*.md")):  # every row of every table, by its first cell
        for row in (line for line in table.read_text().splitlines() if line.startswith("| ")):
            cell = html.escape(row.split("|")[1].strip(), quote=False)
            assert re.search(f"<t[dh][^>]*>{re.escape(cell)}</t[dh]>", page), (table.name, row)
    assert not re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', page)  # self-contained
    images = page.count('src="data:image/png;base64,')
    comparisons = sum(len(c["comparisons"]) for c in yaml.safe_load(
        (results / "findings.json").read_text())["claims"].values())
    assert images == len(list((results / "plots").glob("*.png"))) + (comparisons > 0)  # the forest plot
    assert ('class="contradicted"' in page) == ("| contradicted |" in (results / "findings.md").read_text())


def test_the_forest_plot_has_one_row_per_comparison_and_none_without():
    found = {"claims": {"a": {"comparisons": {"x vs y": {"difference": 1.0, "low": 0.2, "high": 1.8, "threshold": 0,
                                                          "verdict": "holds"}}},
                        "b": {"comparisons": {}}}}
    png = figures.forest_png(found)
    assert png[:4] == b"\x89PNG" and png == figures.forest_png(found)  # same input, same bytes
    assert figures.forest_png({"claims": {"b": {"comparisons": {}}}}) is None


def test_a_missing_input_is_one_line_naming_it(tmp_path):
    for folder in ("results/tables", "results/plots", "metrics"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "results/findings.md", tmp_path / "results/findings.md")
    with pytest.raises(DataError, match=r"results/findings.json: not found; run the aggregate and findings stages"):
        report.build(composed(), tmp_path)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_a_browser_draws_the_report(tmp_path):
    import matplotlib.image

    page = tmp_path / "report.html"
    page.write_text(report.build(composed("grid=evidence"), ROOT))
    screenshot(page, tmp_path / "report.png")
    pixels = matplotlib.image.imread(tmp_path / "report.png")
    assert pixels.shape[:2] == (1800, 1200)
    assert pixels.std() > 0.05  # drawn, not a blank page
