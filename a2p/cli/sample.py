"""`a2p sample`: turn audio clips into face and body motion with exported models, on any number of processes.

    a2p sample --face F --body B --guide G --vq V --out DIR [--reps N] [--sampler ddim500|dpmpp25] [--seed K] AUDIO...
    a2p sample ... --data SHARDS/PERSON --split test          # the split's 600-frame chunks, for a2p eval

AUDIO: wav/flac files, directories of them, or .txt lists. Under torchrun / accelerate launch /
srun the (clip, part, repetition) items are split across processes (or, with --shard windows,
every clip's windows); outputs do not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from a2p.cli.common import reports_errors, setup_logging
from a2p.constants import CROP_MAX_FRAMES


def build_parser() -> argparse.ArgumentParser:
    from a2p.sampling.windows import DEFAULT_OVERLAP

    parser = argparse.ArgumentParser(prog="a2p sample", description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="*", help="audio files, directories of them, or .txt lists")
    for name in ("face", "body", "guide", "vq"):
        parser.add_argument(f"--{name}", required=True, help=f"exported {name} model (a2p export)")
    parser.add_argument("--out", required=True, type=Path, help="output folder: one CLIP.npz per clip")
    parser.add_argument("--data", help="sample a shard set's split (SHARDS/PERSON) instead of audio files")
    parser.add_argument("--split", default="test", help="split of --data (default test)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (seeds) per clip")
    parser.add_argument(
        "--sampler",
        default=None,
        help="ddimN (ddim500 is the reference's), dpmppN (DPM-Solver++(2M)) or paraddimN (parallel-in-time "
        "DDIM); default: the fastest setting that passed a2p bench quality",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shard",
        choices=("items", "windows"),
        default="items",
        help="split (clip, part, repetition) items over ranks (default), or each clip's windows (one long clip)",
    )
    parser.add_argument("--window", type=int, default=CROP_MAX_FRAMES, help="model window in frames")
    parser.add_argument(
        "--overlap", type=int, default=DEFAULT_OVERLAP, help="frames neighbouring windows share"
    )
    parser.add_argument("--window-batch", type=int, default=8, help="windows per forward pass")
    parser.add_argument(
        "--plot", action="store_true", help="also write CLIP.png: motion over the audio envelope"
    )
    parser.add_argument(
        "--results-npy", action="store_true", help="also write CLIP_results.npy in the reference's layout"
    )
    parser.add_argument(
        "--face-guidance", type=float, default=10.0, help="face CFG scale (the reference's 10)"
    )
    parser.add_argument("--body-guidance", type=float, default=2.0, help="body CFG scale (the reference's 2)")
    parser.add_argument("--bf16", action="store_true", help="run the networks under bfloat16 autocast (GPUs)")
    parser.add_argument("--device", default=None, help="default: this rank's GPU if any, else cpu")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    import torch

    from a2p import distributed
    from a2p.errors import A2PError
    from a2p.inference.clips import file_clips, split_clips
    from a2p.inference.job import Collectives, RunSettings, run
    from a2p.inference.pipeline import Pipeline, Windowing
    from a2p.sampling import DEFAULT_SETTING, DEFAULT_SETTING_REASON, SamplerSetting
    from a2p.sampling.windows import WindowPlan

    args = build_parser().parse_args(argv)
    if bool(args.audio) == bool(args.data):
        raise A2PError("give audio files or --data SHARDS/PERSON (one of the two)")
    if args.reps < 1:
        raise A2PError(f"--reps must be at least 1, got {args.reps}")
    if args.sampler is None:
        args.sampler = DEFAULT_SETTING
        default_note = f"sampler {DEFAULT_SETTING} (the default: {DEFAULT_SETTING_REASON})"
    else:
        default_note = f"sampler {args.sampler}"
    SamplerSetting.parse(args.sampler)  # a bad setting fails before any model loads
    WindowPlan.build(args.window * 2, args.window, args.overlap)  # so does a bad window
    info = (
        distributed.init_process_group()
        if distributed.rank_info().world_size > 1
        else distributed.rank_info()
    )
    setup_logging(rank=info.rank)
    if info.is_main:
        print(default_note, flush=True)
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    clips = split_clips(args.data, args.split) if args.data else file_clips(args.audio)
    pipeline = Pipeline.from_exports(
        face=args.face, body=args.body, guide=args.guide, vq=args.vq, device=device
    )
    settings = RunSettings(
        reps=args.reps, setting=args.sampler, seed=args.seed, shard=args.shard,
        windowing=Windowing(args.window, args.overlap, args.window_batch),
        results_npy=args.results_npy, plot=args.plot, bf16=args.bf16,
        guidance={"face": args.face_guidance, "body": args.body_guidance},
    )  # fmt: skip
    collectives = Collectives()
    if info.world_size > 1:
        import torch.distributed as dist

        collectives = Collectives(
            distributed.barrier, dist.all_reduce, lambda flag: distributed.any_rank(flag, device)
        )
    try:
        summary = run(
            clips, pipeline, args.out, settings, rank=info.rank, world_size=info.world_size, device=device,
            collectives=collectives, progress=info.is_main,
        )  # fmt: skip
    finally:
        distributed.destroy_process_group()
    print(
        f"rank {info.rank}/{info.world_size}: {len(summary.done)} items sampled, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} clips failed, {len(summary.assembled)} clips written "
        f"({args.sampler}, {args.reps} reps, shard by {args.shard}) -> {args.out}"
    )
    for name, reason in summary.failed.items():
        print(f"  failed {name}: {reason}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
