"""Command line: `python -m unipeft params --model bart-large --method mam --json`, `python -m unipeft presets`.

Only `params` builds a model: torch and transformers (seconds to import) are imported there, not at start-up, so
`presets` and `--help` answer at once."""

from __future__ import annotations

import argparse
import json
import sys

from .design import ConfigError
from .presets import names, preset

PAPER_MODELS = ("bart-large", "mbart-large-cc25", "roberta-base", "llama-3-8b", "mistral-7b", "qwen2.5-0.5b",
                "smollm2-135m")  # models.PAPER_MODELS, without importing torch


def _scale(text: str) -> float | str:
    return text if text == "learned" else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unipeft")
    commands = parser.add_subparsers(dest="command", required=True)
    params = commands.add_parser("params", help="parameter counts of a method on a model, built without weights")
    params.add_argument("--model", required=True, help=f"{', '.join(PAPER_MODELS)} or a directory with config.json")
    params.add_argument("--method", required=True, help="a preset name (see `presets`)")
    params.add_argument("--attn-bn", type=int, help="attention-side budget: prefix/prompt length l or bottleneck r")
    params.add_argument("--ffn-bn", type=int, help="FFN-side bottleneck r")
    params.add_argument("--scale", type=_scale, help="scale s of scaled compositions, or 'learned'")
    params.add_argument("--json", action="store_true", help="print one JSON object")
    commands.add_parser("presets", help="list the method presets")
    args = parser.parse_args(argv)
    try:
        if args.command == "presets":
            for name in names():
                print(f"{name:18s} {preset(name).notes}")
            return 0
        method = preset(args.method).with_budget(args.attn_bn, args.ffn_bn, args.scale)  # a bad name fails fast
        from .attachment import attach
        from .models import build_without_weights

        try:
            model = build_without_weights(args.model)
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError) as err:  # transformers' errors for an unreadable or unknown config
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"--model {args.model}: not a model configuration transformers can build ({detail})")
        counts = attach(model, method).counts()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = {"model": args.model, **counts.to_dict()}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22s} {value:,}" if isinstance(value, int) else f"{key:22s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
