"""A grid too long for one sitting, run in named parts: each part a list of its runs' stages, which
`dvc repro` / `dvc exp run` take as targets. A part already run is not retrained (its stages are recorded in
dvc.lock); once every part has run, `aggregate` and `findings` read them all.

    python -m unipeft_bench.parts <grid> <part>     # the part's stage names, one line (for $(...))
    python -m unipeft_bench.parts <grid>            # every part and its runs

The grid is composed from conf/ as `dvc exp run -S grid=<grid>` composes it (conf/grid/<grid>.yaml, `grid.parts`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import DataError

CONF = Path("conf")


def composed_grid(name: str) -> dict:
    """params.yaml's `grid` as `dvc exp run -S grid=<name>` would write it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    if not (CONF / "grid" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (CONF / "grid").glob("*.yaml"))
        raise DataError(f"grid {name!r}: no conf/grid/{name}.yaml; known: {', '.join(known)}")
    with initialize_config_dir(str(CONF.resolve()), version_base=None):
        return OmegaConf.to_container(compose("config", overrides=[f"grid={name}"]), resolve=True)["grid"]


def check_parts(grid: dict, where: str = "params.yaml grid.parts") -> dict[str, list[str]]:
    """grid.parts: part name -> runs, every run of the grid in exactly one part; {} when the grid has none."""
    parts = grid.get("parts")
    if parts is None:
        return {}
    if not isinstance(parts, dict) or not all(isinstance(runs, list) for runs in parts.values()):
        raise DataError(f"{where}: expected a mapping of part names to lists of runs")
    placed = [run for runs in parts.values() for run in runs]
    for run in placed:
        if run not in grid["runs"]:
            raise DataError(f"{where}: {run!r} is not a run of the grid")
        if placed.count(run) > 1:
            raise DataError(f"{where}: {run!r} is in more than one part")
    missing = [run for run in grid["runs"] if run not in placed]
    if missing:
        raise DataError(f"{where}: {', '.join(missing)} in no part; every run needs one")
    return {str(name): runs for name, runs in parts.items()}


def stages(grid: dict, part: str) -> list[str]:
    """The train and evaluate stages (dvc.yaml's matrix names) of the part's runs, on every task of the grid."""
    parts = check_parts(grid, f"grid {grid.get('name')!r} parts")
    if part not in parts:
        raise DataError(f"grid {grid.get('name')!r}: no part {part!r}; its parts: {', '.join(parts) or 'none'}")
    kinds = [(kind, task) for kind in ("generation", "classification") for task in grid.get(kind) or []]
    return [f"{step}_{kind}@{task}-{run}" for run in parts[part] for kind, task in kinds
            for step in ("train", "evaluate")]


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m unipeft_bench.parts <grid> [<part>]", file=sys.stderr)
        return 2
    try:
        grid = composed_grid(argv[0])
        if len(argv) == 2:
            print(" ".join(stages(grid, argv[1])))
        else:
            for name, runs in check_parts(grid, f"grid {argv[0]!r} parts").items():
                print(f"{name}: {' '.join(runs)}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
