#!/usr/bin/env bash
# The coordinator of a grid spread over several machines, once every worker has pushed: every run restored from the
# DVC remote's run-cache (none trained here), then the tables and findings (README, "Several machines").
#   bash scripts/cluster/coordinator.sh [<grid>]
set -euo pipefail
cd "$(dirname "$0")/../.."
grid=${1:-}
[ -x .venv/bin/python ] || bash setup.sh --data
. .venv/bin/activate
if [ -n "$grid" ]; then
  dvc exp run --pull -S "grid=$grid"
else
  dvc repro --pull
fi
