"""`a2p bench models`: size, FLOPs and denoising-step cost of the models.

For each diffusion model (face, body) it times one denoising step of an 8 s clip with CFG and
several repetitions on two paths:

- a2p: the clip's audio is featurized and its condition encoded once, before the step loop;
  every step is one forward over reps x (conditional + unconditional) rows in one batch;
- reference-style: every step featurizes the audio, re-encodes the condition and runs the
  conditional and unconditional passes separately, one repetition after another.

The VQ-VAE and the guide transformer are reported by parameters and FLOPs when present.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from a2p.config.denoiser import denoiser_preset
from a2p.constants import AUDIO_CHANNELS, FPS, KEYFRAME_INTERVAL, SAMPLES_PER_FRAME
from a2p.models.audio import build_featurizer
from a2p.models.denoiser import Denoiser, build_denoiser

DIFFUSION_MODELS = ("face", "body")
OTHER_MODELS = ("vq", "guide")


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of `fn` (matmuls and convolutions, as PyTorch counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Mean wall time of `fn` in milliseconds over `repeats` calls, after one warm-up call."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) * 1000.0 / repeats


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Row:
    model: str
    params: int
    encode_flops: int | None = None
    step_flops: int | None = None
    a2p_ms: float | None = None
    reference_ms: float | None = None
    note: str = ""


def bench_denoiser(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Row:
    config = denoiser_preset(name, args.preset)
    model: Denoiser = build_denoiser(config).to(device).eval()
    params = parameter_count(model)
    model.requires_grad_(False)  # the FLOP counter's module hooks need tensors without autograd history
    featurizer = build_featurizer("mel").to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    audio = (torch.rand(1, args.frames * SAMPLES_PER_FRAME, AUDIO_CHANNELS, generator=gen) * 2 - 1).to(device)
    guide = None
    if model.has_guide:
        guide = torch.randn(1, args.frames // KEYFRAME_INTERVAL, config.guide_dim, generator=gen).to(device)
    reps = args.reps
    x_t = torch.randn(reps, args.frames, config.motion_dim, generator=gen).to(device)
    t = torch.full((reps,), 500, dtype=torch.long, device=device)
    scale = 2.0
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def encode_once():
        features = featurizer(audio)
        condition = model.encode_condition(features, guide)
        condition = condition.map(lambda x: x.expand(reps, *x.shape[1:]))
        return model.expand_for_cfg(condition)

    with torch.no_grad(), autocast:
        cfg_condition = encode_once()
        x_cfg = torch.cat([x_t, x_t])
        t_cfg = torch.cat([t, t])

        def a2p_step():
            out = model(x_cfg, t_cfg, cfg_condition)
            cond, uncond = out.chunk(2)
            return uncond + scale * (cond - uncond)

        keep, drop = (
            torch.ones(1, dtype=torch.bool, device=device),
            torch.zeros(1, dtype=torch.bool, device=device),
        )

        def reference_step():
            outs = []
            for rep in range(reps):
                features = featurizer(audio)
                cond = model(x_t[rep : rep + 1], t[:1], model.encode_condition(features, guide, keep))
                features = featurizer(audio)
                uncond = model(x_t[rep : rep + 1], t[:1], model.encode_condition(features, guide, drop))
                outs.append(uncond + scale * (cond - uncond))
            return torch.cat(outs)

        encode_flops = count_flops(encode_once)
        step_flops = count_flops(a2p_step)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        a2p_ms = time_ms(a2p_step, args.steps, sync)
        reference_ms = time_ms(reference_step, args.steps, sync)
    return Row(name, params, encode_flops, step_flops, a2p_ms, reference_ms)


def bench_other(name: str, args: argparse.Namespace, device: torch.device) -> Row:
    """Parameters (and FLOPs where the model module offers a clip-sized example) of the VQ or guide."""
    module = f"a2p.models.{name}"
    if importlib.util.find_spec(module) is None:
        return Row(name, 0, note="model not built yet")
    models = importlib.import_module(module)
    configs = importlib.import_module(f"a2p.config.{name}")
    config = getattr(configs, f"{name}_preset")(args.preset)
    model = getattr(models, f"build_{name}")(config).to(device).eval()
    return Row(name, parameter_count(model), note="timed by `a2p bench sample`")


def human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench models", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*DIFFUSION_MODELS, *OTHER_MODELS])
    parser.add_argument("--preset", default="paper", choices=["paper", "debug"])
    parser.add_argument("--frames", type=int, default=8 * FPS, help="clip length in frames (240 = 8 s)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions sampled together")
    parser.add_argument("--steps", type=int, default=3, help="timed denoising steps per path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = sorted(set(args.models) - {*DIFFUSION_MODELS, *OTHER_MODELS})
    if unknown:
        print(f"error: unknown model(s) {unknown}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(
        f"a2p bench models: preset={args.preset} clip={args.frames} frames ({args.frames / FPS:.1f} s) "
        f"reps={args.reps} CFG  device={device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} cpu={platform.processor() or platform.machine()}"
    )
    print(
        "  a2p step:       condition encoded once per clip; reps x (cond + uncond) rows in one forward\n"
        "  reference step: featurize + encode every step; cond and uncond passes separate; reps in turn\n"
    )
    rows = []
    for name in args.models:
        rows.append(
            bench_denoiser(name, args, device, dtype)
            if name in DIFFUSION_MODELS
            else bench_other(name, args, device)
        )
    header = f"{'model':<6} {'params':>9} {'encode FLOPs':>13} {'step FLOPs':>11} {'a2p ms/step':>12} {'ref ms/step':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.reference_ms / row.a2p_ms:.2f}x" if row.a2p_ms else "-"
        a2p_ms = f"{row.a2p_ms:.2f}" if row.a2p_ms is not None else "-"
        ref_ms = f"{row.reference_ms:.2f}" if row.reference_ms is not None else "-"
        print(
            f"{row.model:<6} {human(row.params):>9} {human(row.encode_flops):>13} {human(row.step_flops):>11} "
            f"{a2p_ms:>12} {ref_ms:>12} {ratio:>7}  {row.note}".rstrip()
        )
    print("\nencode FLOPs: featurize + condition for the whole CFG batch, paid once per clip by a2p;")
    print("step FLOPs: one a2p denoising step (all reps, cond + uncond). ratio = reference ms / a2p ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
