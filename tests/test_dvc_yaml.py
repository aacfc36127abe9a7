"""dvc.yaml declares every module a stage's script imports, so that an edit to one reruns the stages it feeds
(and only those: a stage lists modules, not the whole package)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "unipeft_bench"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported(path: Path) -> set[str]:
    """Files of src/unipeft_bench that `path` imports, directly or through them, and `src/unipeft` if it does."""
    found, pending = set(), [path]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = "unipeft_bench" if node.level else (node.module or "")
                module = f"{base}.{node.module}" if node.level and node.module else base
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "unipeft":
                    found.add("src/unipeft")
                module_file = PACKAGE / f"{name.removeprefix('unipeft_bench.')}.py"
                if name.startswith("unipeft_bench.") and module_file.is_file():
                    relative = str(module_file.relative_to(ROOT))
                    if relative not in found:
                        found.add(relative)
                        pending.append(module_file)
    return found


def declared(stage: dict) -> set[str]:
    body = stage.get("do", stage)
    return {d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_every_module_its_script_imports(name):
    stage = STAGES[name].get("do", STAGES[name])
    script = re.search(r"stages/\w+\.py", stage["cmd"]).group(0)
    deps = declared(STAGES[name])
    assert script in deps
    missing = imported(ROOT / script) - deps
    assert not missing, f"dvc.yaml stage {name}: add {sorted(missing)} to its deps"


def test_the_import_scan_follows_relative_imports():
    assert {"src/unipeft_bench/metrics.py", "src/unipeft_bench/errors.py"} <= imported(PACKAGE / "training.py")
    assert "src/unipeft" in imported(PACKAGE / "runs.py")
