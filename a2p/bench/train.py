"""`a2p bench train`: training samples/s per device of each model, a2p's step against the reference's.

One training step on one 600-frame crop batch, forward + backward + AdamW:

- a2p: audio features read from the batch (precomputed once into the shards by `a2p data
  build --features`), one forward;
- reference-style: the frozen featurizer runs on the batch's audio every step, and the diffusion
  models make one extra no-grad forward for the variational-bound term they log but never train on.

`--scaling` also runs `a2p train body --preset debug` on synthesized shards with 1 and 2 gloo
processes (torchrun) and reports samples/s per process from the runs' TensorBoard logs.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from a2p.bench.timing import time_calls
from a2p.config.audio import FEATURE_DIMS
from a2p.constants import (
    AUDIO_CHANNELS,
    CROP_MAX_FRAMES,
    FACE_DIM,
    KEYFRAME_INTERVAL,
    POSE_DIM,
    SAMPLES_PER_FRAME,
)
from a2p.diffusion import NUM_TRAIN_STEPS, cosine_schedule, diffusion_loss, q_sample, sample_timesteps
from a2p.models.audio import build_featurizer
from a2p.models.denoiser import ConditionInputs

MODELS = ("face", "body", "vq", "guide")


def fake_batch(batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A loader-shaped batch of full 600-frame crops (random values; shapes are what cost)."""
    frames, keyframes = CROP_MAX_FRAMES, CROP_MAX_FRAMES // KEYFRAME_INTERVAL
    features_frames = frames * SAMPLES_PER_FRAME // 480
    return {
        "face": torch.randn(batch, frames, FACE_DIM, generator=generator),
        "body": torch.randn(batch, frames, POSE_DIM, generator=generator),
        "mask": torch.ones(batch, frames, dtype=torch.bool),
        "keyframes": torch.randn(batch, keyframes, POSE_DIM, generator=generator),
        "keyframe_mask": torch.ones(batch, keyframes, dtype=torch.bool),
        "audio": torch.rand(batch, frames * SAMPLES_PER_FRAME, AUDIO_CHANNELS, generator=generator) * 2 - 1,
        "features": torch.randn(batch, features_frames, FEATURE_DIMS["mel"], generator=generator),
    }


def diffusion_step(
    name: str, preset: str, reference: bool
) -> tuple[torch.nn.Module, Callable[[dict], torch.Tensor]]:
    from a2p.config.denoiser import denoiser_preset
    from a2p.models.denoiser import build_denoiser

    model = build_denoiser(denoiser_preset(name, preset))
    featurizer = build_featurizer("mel")
    schedule = cosine_schedule(NUM_TRAIN_STEPS)
    lambda_vel = 2.0 if name == "body" else 0.0

    def loss(batch: dict) -> torch.Tensor:
        x0 = batch[name]
        features = featurizer(batch["audio"]) if reference else batch["features"]
        guide = batch["keyframes"] if name == "body" else None
        t = sample_timesteps(x0.shape[0], NUM_TRAIN_STEPS, x0.device)
        x_t = q_sample(schedule, x0, t, torch.randn_like(x0))
        inputs = ConditionInputs(features, guide, torch.rand(x0.shape[0]) >= 0.2)
        out = diffusion_loss(model(x_t, t, inputs), x0, batch["mask"], lambda_vel=lambda_vel)
        if reference:
            with torch.no_grad():  # the variational-bound term: a second forward, logged only
                model(x_t, t, inputs)
        return out.loss.mean()

    return model, loss


def vq_step(preset: str, reference: bool) -> tuple[torch.nn.Module, Callable[[dict], torch.Tensor]]:
    from a2p.config.vq import vq_preset
    from a2p.models.vq import build_vq

    model = build_vq(vq_preset(preset))
    return model, lambda batch: model(batch["keyframes"], batch["keyframe_mask"])[1]["loss"]


def guide_step(preset: str, reference: bool) -> tuple[torch.nn.Module, Callable[[dict], torch.Tensor]]:
    from a2p.config.guide import guide_preset
    from a2p.models.guide import build_guide

    config = guide_preset(preset)
    model = build_guide(config)
    featurizer = build_featurizer("mel")

    def loss(batch: dict) -> torch.Tensor:
        shape = (*batch["keyframes"].shape[:2], config.levels)
        codes = torch.randint(0, config.codes, shape, generator=torch.Generator().manual_seed(0))
        features = featurizer(batch["audio"]) if reference else batch["features"]
        return model(codes, features, batch["keyframe_mask"])["loss"]

    return model, loss


def samples_per_sec(name: str, args: argparse.Namespace, reference: bool) -> float:
    torch.manual_seed(0)
    if name in ("face", "body"):
        model, loss = diffusion_step(name, args.preset, reference)
    elif name == "vq":
        model, loss = vq_step(args.preset, reference)
    else:
        model, loss = guide_step(args.preset, reference)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = fake_batch(args.batch_size, torch.Generator().manual_seed(1))
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(batch).backward()
        optimizer.step()

    return args.steps * args.batch_size / sum(time_calls(step, args.steps, warmup=1))


def scaling(args: argparse.Namespace) -> list[tuple[int, float]]:
    """samples/s per process of `a2p train body --preset debug` with 1 and 2 gloo processes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from data_tools.build import build
    from data_tools.synth import synthesize

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (person,) = synthesize(root / "raw", ["PXB184"], scenes=10, seconds=30, seed=0)
        # one window per shard (1 MiB shards): a shard for every rank
        build(person, root / "shards", features="mel", max_shard_bytes=1024 * 1024)
        for procs in (1, 2):
            run = root / f"run{procs}"
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                "-m", "a2p.cli.train", "body", "--data", str(root / "shards"), "--run-dir", str(run),
                "--preset", "debug", "--max-steps", str(args.scaling_steps),
                "--set", "train.batch_size=2", "--set", "train.log.interval=5", "--set", "train.precision=fp32",
                "--set", "train.log.progress_bar=false",
            ]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True, env={**_env(), "OMP_NUM_THREADS": "1"})
            events = EventAccumulator(str(run / "tensorboard"))
            events.Reload()
            values = [e.value for e in events.Scalars("perf/samples_per_sec")][1:]  # skip the warm-up window
            results.append((procs, sum(values) / max(len(values), 1)))
            shutil.rmtree(run)
    return results


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--preset", default="a2p", choices=["a2p", "debug"], help="a2p: its models at the paper's sizes"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps per model and path")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scaling", action="store_true", help="also measure 1 -> 2 gloo processes")
    parser.add_argument("--scaling-steps", type=int, default=30)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"a2p bench train: preset={args.preset} batch={args.batch_size} x 600 frames, {args.steps} steps, "
        f"threads={torch.get_num_threads()} torch={torch.__version__} cpu={platform.machine()}"
    )
    print("  a2p:       features from the batch (precomputed in the shards), one forward + backward")
    print(
        "  reference: featurize audio every step; diffusion models add a no-grad variational-bound forward\n"
    )
    header = f"{'model':<6} {'a2p samples/s':>14} {'reference samples/s':>20} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        fast = samples_per_sec(name, args, reference=False)
        if name == "vq":  # no audio and no bound term: the reference's step is the same
            print(f"{name:<6} {fast:>14.2f} {'(same step)':>20} {'-':>7}")
            continue
        slow = samples_per_sec(name, args, reference=True)
        print(f"{name:<6} {fast:>14.2f} {slow:>20.2f} {fast / slow:>6.2f}x")
    if args.scaling:
        print(
            "\n1 -> 2 gloo processes, `a2p train body --preset debug` (samples/s per process, TensorBoard):"
        )
        rows = scaling(args)
        base = rows[0][1]
        for procs, rate in rows:
            print(
                f"  {procs} process(es): {rate:8.2f} per process, {rate * procs:8.2f} total, {rate * procs / base:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
