"""`a2p data`: synthesize recordings, build WebDataset shards, verify them, merge array-job parts.

a2p data synth  --out DIR [--people PXB184 ...] [--scenes N] [--seconds S] [--seed K]
a2p data build  --src DIR/PERSON --out SHARDS/PERSON [--workers N] [--window F --hop F]
                [--features NAME] [--max-shard-mb M] [--part I --parts N] [--overwrite]
a2p data verify SHARDS/PERSON
a2p data merge  SHARDS/PERSON
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from a2p.cli.common import reports_errors, setup_logging
from a2p.data.format import DEFAULT_HOP_FRAMES, DEFAULT_MAX_SHARD_BYTES, DEFAULT_WINDOW_FRAMES, Manifest
from a2p.errors import DataError

BYTES_PER_MB = 1024 * 1024
DEFAULTS = argparse.ArgumentDefaultsHelpFormatter


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from data_tools.synth import DEFAULT_PEOPLE, DEFAULT_SCENES, DEFAULT_SECONDS

    parser = argparse.ArgumentParser(prog="a2p data", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth", formatter_class=DEFAULTS, help="write a synthetic dataset in the recorded layout"
    )
    synth.add_argument("--out", type=Path, required=True, help="dataset folder (one sub-folder per person)")
    synth.add_argument("--people", nargs="+", default=list(DEFAULT_PEOPLE), help="person ids to synthesize")
    synth.add_argument("--scenes", type=_positive_int, default=DEFAULT_SCENES, help="scenes per person")
    synth.add_argument(
        "--seconds", type=_positive_float, default=DEFAULT_SECONDS, help="length of each scene"
    )
    synth.add_argument("--seed", type=int, default=0, help="everything written is a function of it")

    build = commands.add_parser(
        "build", formatter_class=DEFAULTS, help="convert one person folder into WebDataset shards"
    )
    build.add_argument("--src", type=Path, required=True, help="person folder of sceneNN_* files")
    build.add_argument("--out", type=Path, required=True, help="shard folder of that person")
    build.add_argument(
        "--workers", type=_positive_int, default=min(8, os.cpu_count() or 1), help="processes over scenes"
    )
    build.add_argument(
        "--window", type=_positive_int, default=DEFAULT_WINDOW_FRAMES, help="window length (frames)"
    )
    build.add_argument("--hop", type=_positive_int, default=DEFAULT_HOP_FRAMES, help="window hop (frames)")
    build.add_argument(
        "--features", default=None, help="store frozen audio features of this featurizer (e.g. mel)"
    )
    build.add_argument(
        "--features-weights",
        "--audio-weights",
        dest="features_weights",
        default=None,
        help="local weights file of a pretrained featurizer",
    )
    build.add_argument(
        "--max-shard-mb",
        type=_positive_float,
        default=DEFAULT_MAX_SHARD_BYTES / BYTES_PER_MB,
        help="close a shard once it reaches this size",
    )
    build.add_argument("--part", type=int, default=0, help="array jobs: which scene group this task builds")
    build.add_argument("--parts", type=_positive_int, default=1, help="array jobs: scene groups per person")
    build.add_argument(
        "--overwrite", action="store_true", help="delete shards of an earlier build with other settings"
    )

    verify = commands.add_parser(
        "verify", formatter_class=DEFAULTS, help="re-read every shard and check it against the manifest"
    )
    verify.add_argument("shards", type=Path, help="shard folder of one person")

    merge = commands.add_parser(
        "merge", formatter_class=DEFAULTS, help="join the parts of an array-job build into manifest.json"
    )
    merge.add_argument("shards", type=Path, help="shard folder of one person")
    return parser


def _summary_line(split: str, shards: int, samples: int, frames: int, hours: float) -> str:
    return f"  {split:<5} {shards:4d} shards {samples:6d} samples {frames:9d} frames {hours:8.3f} h"


def print_summary(manifest: Manifest, where: Path) -> None:
    """One line per split: shards, samples (windows), distinct frames and hours."""
    print(f"{where}: {manifest.person}")
    for name, split in manifest.splits.items():
        print(_summary_line(name, len(split.shards), split.samples, split.frames, split.hours))


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "synth":
        from data_tools.synth import synthesize

        folders = synthesize(args.out, args.people, args.scenes, args.seconds, args.seed)
        for folder in folders:
            print(f"{folder}: {args.scenes} scenes of {args.seconds:g} s")
    elif args.command == "build":
        from data_tools.build import build

        manifest = build(
            args.src,
            args.out,
            workers=args.workers,
            window_frames=args.window,
            hop_frames=args.hop,
            features=args.features,
            features_weights=args.features_weights,
            max_shard_bytes=int(args.max_shard_mb * BYTES_PER_MB),
            part=args.part,
            parts=args.parts,
            overwrite=args.overwrite,
        )
        if manifest is not None:
            print_summary(manifest, args.out)
        else:
            print(
                f"{args.out}: part {args.part} of {args.parts} done; run `a2p data merge {args.out}` after all"
            )
    elif args.command == "verify":
        from data_tools.verify import verify_shards

        report = verify_shards(args.shards)
        print(f"{args.shards}: {report.manifest.person} (what the shards hold)")
        for name, found in report.splits.items():
            print(_summary_line(name, found.shards, found.samples, found.frames, found.hours))
        if not report.ok:
            raise DataError(
                f"{args.shards}: {len(report.problems)} problem(s):\n  " + "\n  ".join(report.problems)
            )
        print("verified: every shard matches the manifest")
    elif args.command == "merge":
        from data_tools.merge import merge_parts

        print_summary(merge_parts(args.shards), args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
