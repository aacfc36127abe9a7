#!/usr/bin/env bash
# One worker of a grid spread over several machines: its shard's stages, then its results and run-cache pushed to
# the project's DVC remote (README, "Several machines").
#   bash scripts/cluster/worker.sh <workers> <index> [<grid>]
# Run in a clone of the project at the coordinator's commit. A worker that died is started again with the same
# arguments: stages it finished are not rerun (dvc.lock and the run-cache), and an interrupted run resumes from
# its last checkpoint if checkpoints/ survived (it is local to the machine; on a new machine the run starts over).
set -euo pipefail
cd "$(dirname "$0")/../.."
workers=$1 index=$2 grid=${3:-}
[ -x .venv/bin/python ] || bash setup.sh --data
. .venv/bin/activate
if [ -n "$grid" ]; then  # a named grid, composed as `dvc exp run -S grid=<grid>` would, into params.yaml
  python -c "import sys, yaml; from unipeft_bench.parts import composed_params; \
yaml.safe_dump(composed_params(sys.argv[1]), open('params.yaml', 'w'), sort_keys=False)" "$grid"
fi
# one stage at a time, each pushed when done: a machine lost mid-shard loses only the run it was on.
# --pull: whatever any worker already pushed (data, tokenized sets, finished runs) is restored, not rerun.
for stage in $(python -m unipeft_bench.shards --workers "$workers" --index "$index"); do
  dvc repro --pull "$stage"
  python -m unipeft_bench.shards --push
done
