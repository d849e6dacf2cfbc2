"""`a2p sample`: turn audio clips into face and body motion with exported models, on any number of processes.

    a2p sample --face F --body B --guide G --vq V --out DIR [--reps N] [--sampler ddim500|dpmpp25] [--seed K] AUDIO...

AUDIO: wav/flac files, directories of them, or .txt lists. Under torchrun / accelerate launch /
srun the clips are split across processes; outputs do not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from a2p.cli.common import reports_errors, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p sample", description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="+", help="audio files, directories of them, or .txt lists")
    for name in ("face", "body", "guide", "vq"):
        parser.add_argument(f"--{name}", required=True, help=f"exported {name} model (a2p export)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: one CLIP.npz per clip")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (seeds) per clip")
    parser.add_argument("--sampler", default="ddim500", help="ddimN (ddim500 is the reference's) or dpmppN")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: this rank's GPU if any, else cpu")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    import torch

    from a2p import distributed
    from a2p.inference.runner import Models, list_clips, run
    from a2p.inference.sampling import SamplerSetting

    args = build_parser().parse_args(argv)
    info = distributed.rank_info()
    setup_logging(rank=info.rank)
    SamplerSetting.parse(args.sampler)  # a bad setting fails before any model loads
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    clips = list_clips(args.audio)
    models = Models.load(args.face, args.body, args.guide, args.vq, device)
    summary = run(
        clips, models, args.out, reps=args.reps, setting=args.sampler, seed=args.seed,
        rank=info.rank, world_size=info.world_size, device=device, progress=info.is_main,
    )  # fmt: skip
    print(
        f"rank {info.rank}/{info.world_size}: {len(summary.done)} sampled, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed ({args.sampler}, {args.reps} reps) -> {args.out}"
    )
    for name, reason in summary.failed.items():
        print(f"  failed {name}: {reason}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
