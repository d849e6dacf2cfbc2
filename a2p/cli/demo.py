"""`a2p demo`: the data engineer's job end to end on a small synthesized dataset.

synthesize recordings -> build shards -> verify them -> print what was made. Each step is the
same `a2p data ...` command a user runs, so the demo doubles as a walkthrough.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from a2p.cli import data as data_cli
from a2p.cli.common import reports_errors, setup_logging
from a2p.data.format import load_manifest

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything it makes")
    parser.add_argument("--people", nargs="+", default=["PXB184"], help="people to synthesize")
    parser.add_argument("--scenes", type=int, default=10, help="scenes per person (at least 7)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each scene")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel scene readers for the build")
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    return parser


def run_step(title: str, argv: list[str]) -> None:
    logger.info("%s: a2p data %s", title, " ".join(argv))
    code = data_cli.main(argv)
    if code != 0:
        raise SystemExit(code)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    raw, shards = args.out / "raw", args.out / "shards"
    started = time.perf_counter()
    synth = ["synth", "--out", str(raw), "--people", *args.people, "--scenes", str(args.scenes)]
    run_step("1/3 synthesize", [*synth, "--seconds", str(args.seconds), "--seed", str(args.seed)])
    for person in args.people:
        build = ["build", "--src", str(raw / person), "--out", str(shards / person)]
        run_step(f"2/3 build {person}", [*build, "--workers", str(args.workers)])
        run_step(f"3/3 verify {person}", ["verify", str(shards / person)])

    print(f"\na2p demo made, in {time.perf_counter() - started:.1f} s:")
    print(f"  recordings  {raw}/")
    for person in args.people:
        manifest = load_manifest(shards / person)
        print(f"  shards      {shards / person}/")
        for name, split in manifest.splits.items():
            print(
                f"    {name:<5} {len(split.shards):3d} shards {split.samples:4d} windows "
                f"{split.frames:7d} frames {split.hours * 60:6.2f} min  scenes {', '.join(split.scenes)}"
            )
    print("\nnext: `a2p bench data --data", shards / args.people[0], "` measures the streaming loader.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
