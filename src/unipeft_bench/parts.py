"""A grid too long for one sitting, run in named parts: each part a list of its runs' stages, which
`dvc repro` / `dvc exp run` take as targets. A part already run is not retrained (its stages are recorded in
dvc.lock); once every part has run, `aggregate` and `findings` read them all.

    python -m unipeft_bench.parts <grid> <part>     # the part's stage names, one line (for $(...))
    python -m unipeft_bench.parts <grid>            # every part and its runs
    python -m unipeft_bench.parts <grid> <part> --save DIR   # the part's results (in git) copied to DIR
    python -m unipeft_bench.parts <grid> --restore DIR       # every saved part's results back into the workspace

--save and --restore carry a part's results between workspaces through git: a part run in its own clone
(session, machine) is saved under results/<grid>/ in the main branch, where the tables and findings of the whole
grid can be made in any clone once every part is there. They copy what the aggregate and findings stages read
(each run's predictions, test metrics and training curves), the part's dvc.lock entries and params.yaml
(provenance).

The grid is composed from conf/ as `dvc exp run -S grid=<grid>` composes it (conf/grid/<grid>.yaml, `grid.parts`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import DataError

CONF = Path("conf")


def composed_params(grid: str) -> dict:
    """params.yaml as `dvc exp run -S grid=<grid>` would write it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    if not (CONF / "grid" / f"{grid}.yaml").is_file():
        known = sorted(p.stem for p in (CONF / "grid").glob("*.yaml"))
        raise DataError(f"grid {grid!r}: no conf/grid/{grid}.yaml; known: {', '.join(known)}")
    with initialize_config_dir(str(CONF.resolve()), version_base=None):
        return OmegaConf.to_container(compose("config", overrides=[f"grid={grid}"]), resolve=True)


def composed_grid(name: str) -> dict:
    """params.yaml's `grid` as `dvc exp run -S grid=<name>` would write it."""
    return composed_params(name)["grid"]


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


def _result_paths(grid: dict, runs: list[str]) -> list[Path]:
    tasks = [task for kind in ("generation", "classification") for task in grid.get(kind) or []]
    return [Path(root) / task / run for task in tasks for run in runs
            for root in ("predictions", "metrics", "metrics/train")]


def save(grid: dict, part: str, target: Path, root: Path = Path(".")) -> list[Path]:
    """Copy the part's results and dvc.lock entries from the workspace `root` into `target`; refused, with nothing
    copied, if a run of the part has no results yet."""
    import shutil

    import yaml

    names = stages(grid, part)  # refuses an unknown part
    paths = _result_paths(grid, check_parts(grid)[part])
    missing = [str(p) for p in paths if not (root / p).is_dir()]
    if missing:
        raise DataError(f"part {part!r}: no {missing[0]} here; run the part first")
    lock_file = target / "dvc-lock.yaml"
    entries = yaml.safe_load(lock_file.read_text()) if lock_file.is_file() else {}
    ran = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    entries.update({name: ran[name] for name in names if name in ran})
    for path in paths:
        shutil.rmtree(target / path, ignore_errors=True)
        shutil.copytree(root / path, target / path)
    lock_file.write_text(yaml.safe_dump(dict(sorted(entries.items())), sort_keys=False))
    shutil.copyfile(root / "params.yaml", target / "params.yaml")  # the grid's composed settings
    return paths


def restore(source: Path, root: Path = Path(".")) -> list[Path]:
    """Every saved part's results copied from `source` into the workspace `root` (what --save wrote)."""
    import shutil

    copied = [path.relative_to(source) for top in ("predictions", "metrics")
              for path in sorted((source / top).rglob("*")) if path.is_file()]
    for relative in copied:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, root / relative)
    if not copied:
        raise DataError(f"{source}: no saved results (predictions/, metrics/); save a part with --save first")
    return copied


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unipeft_bench.parts")
    parser.add_argument("grid")
    parser.add_argument("part", nargs="?")
    parser.add_argument("--save", type=Path, metavar="DIR", help="copy the part's results into DIR")
    parser.add_argument("--restore", type=Path, metavar="DIR", help="copy every saved part's results back")
    args = parser.parse_args(argv)
    try:
        grid = composed_grid(args.grid)
        if args.save and args.part:
            print(f"part {args.part}: {len(save(grid, args.part, args.save))} result folders saved in {args.save}")
        elif args.restore and not args.part:
            print(f"{len(restore(args.restore))} result files restored from {args.restore}")
        elif args.save or args.restore:
            parser.error("--save takes a part, --restore none")
        elif args.part:
            print(" ".join(stages(grid, args.part)))
        else:
            for name, runs in check_parts(grid, f"grid {args.grid!r} parts").items():
                print(f"{name}: {' '.join(runs)}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
