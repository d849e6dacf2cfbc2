"""`a2p eval`: the paper's metrics (FD_g, FD_k, Div_g, Div_k, variance across repetitions) of sampled results.

a2p sample --data SHARDS/PERSON --split test --out DIR ...     # the split's 600-frame chunks
a2p eval --data SHARDS/PERSON --results DIR [--split test] [--out FILE.json]

FD_g, FD_k, Div_g, Div_k are given per repetition as mean ± spread, and FD_g, FD_k, Div_g also
pooled over all repetitions as the reference's utils/eval.py computes them (`pooled_*` rows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from a2p.cli.common import reports_errors, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p eval", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the shard set sampled (SHARDS/PERSON)")
    parser.add_argument("--results", required=True, type=Path, help="a2p sample --data ... output folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--seed", type=int, default=0, help="seed of Div_g's random frame pairs")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    from a2p.evaluation.run import evaluate, markdown_table, write_report

    args = build_parser().parse_args(argv)
    setup_logging()
    report = evaluate(args.data, args.results, args.split, seed=args.seed)
    print(f"{args.results} on the {args.split} split of {args.data}:\n")
    print(markdown_table(report))
    if args.out:
        write_report(report, args.out)
        print(f"\nreport: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
