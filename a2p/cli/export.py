"""`a2p export RUN_DIR --out FILE`: the EMA weights of a run's latest checkpoint as one safetensors file.

The file carries the task and its resolved config in its metadata: inference needs nothing else.
"""

from __future__ import annotations

import argparse
import sys

from a2p.cli.common import reports_errors, setup_logging
from a2p.models.export import load_export
from a2p.training.export import export_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p export", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory (its latest checkpoint) or one checkpoint step directory")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    out = export_run(args.run, args.out, use_ema=not args.raw)
    exported = load_export(out)
    params = sum(p.numel() for p in exported.model.parameters())
    print(
        f"{out}: {exported.task} model, {params:,} parameters, {exported.weights} weights of step {exported.step}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
