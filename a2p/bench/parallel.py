"""`a2p bench parallel`: what parallel-in-time DDIM (`paraddimN`) buys: sequential model calls saved, compute spent.

    a2p bench parallel [--face EXPORT | --preset debug|a2p] [--seconds 8] [--reps 3]
                       [--settings ddim500 ddim100] [--windows 16 64] [--tolerance 1e-3]

For one clip's face diffusion (guidance 10, all repetitions batched) it runs sequential DDIM and
the Picard iterations of `a2p.diffusion.parallel` from the same noise, and prints the rounds
(sequential batched model calls) against the steps, the steps evaluated in all (the compute), and
how far the result lies from DDIM's. Convergence depends on the model: give a trained `--face`
export for figures that mean something (random weights converge differently). The latency gain
needs a device where a batch of `window` steps costs about one step; a CPU does not have one.
"""

from __future__ import annotations

import argparse
import sys

import torch

from a2p.bench.models import threads_and_seed
from a2p.config.denoiser import denoiser_preset
from a2p.constants import FPS
from a2p.diffusion import ddim_sample
from a2p.diffusion.parallel import PicardStats, picard_ddim
from a2p.inference.pipeline import DEFAULT_GUIDANCE
from a2p.models.denoiser import build_denoiser
from a2p.sampling import clip_model, setting_schedule
from a2p.sampling.windows import feature_frames


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench parallel", description=__doc__.splitlines()[0])
    parser.add_argument("--face", help="a trained face export (default: random weights of --preset)")
    parser.add_argument("--preset", default="debug", choices=("debug", "a2p"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["ddim500", "ddim100"])
    parser.add_argument("--windows", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    frames = round(args.seconds * FPS / 3) * 3  # whole feature frames
    with threads_and_seed(args.threads, args.seed), torch.no_grad():
        if args.face:
            from a2p.models.export import load_export

            denoiser = load_export(args.face, expect_task="face").model.eval()
        else:
            denoiser = build_denoiser(denoiser_preset("face", args.preset)).eval()
        generator = torch.Generator().manual_seed(args.seed)
        features = torch.randn(1, feature_frames(frames), denoiser.config.audio_dim, generator=generator)
        noise = torch.randn(args.reps, frames, denoiser.config.motion_dim, generator=generator)
        print(
            f"face diffusion, {args.face or 'random ' + args.preset + ' weights'}, {frames} frames, "
            f"{args.reps} reps, guidance {DEFAULT_GUIDANCE['face']:g}, tolerance {args.tolerance:g}\n"
        )
        model = clip_model(denoiser, features, None, args.reps, DEFAULT_GUIDANCE["face"])  # encoded once
        print("setting  window  rounds  steps  fewer calls  step evals  compute  max|diff|/mean|x|")
        for setting in args.settings:
            _, schedule = setting_schedule(setting, torch.device("cpu"))
            reference = ddim_sample(model, schedule, noise)
            scale = reference.abs().mean()
            for window in args.windows:
                stats = PicardStats(0)
                out = picard_ddim(
                    model, schedule, noise, window=window, tolerance=args.tolerance, stats=stats
                )
                diff = float((out - reference).abs().max() / scale)
                print(
                    f"{setting:<8} {window:>6}  {stats.rounds:>6}  {stats.steps:>5}  "
                    f"{stats.steps / stats.rounds:>10.1f}x  {stats.step_evaluations:>10}  "
                    f"{stats.step_evaluations / stats.steps:>6.1f}x  {diff:.2e}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
