"""`a2p bench models`: parameters, forward FLOPs and CPU/GPU cost of the four models.

Per model, for one clip of `--frames` frames (240 = 8 s):

- face and body denoisers: FLOPs of encoding a clip's condition (audio features, and guide
  poses for the body) and of one denoising forward of (1, T, D); then ms per denoising step of
  `--reps` repetitions with classifier-free guidance on two paths:
  a2p: condition encoded once per clip, before the step loop; each step is ONE forward over
  reps x (conditional + unconditional) rows;
  reference-style (facebookresearch/audio2photoreal, sample/generate.py): repetitions in turn;
  each step featurizes the audio and re-encodes the condition inside two separate forwards, one
  conditional and one unconditional: reps x 2 passes of batch 1;
- VQ-VAE: FLOPs of encoding and decoding the clip's keyframes (one every 30 frames);
- guide transformer: FLOPs of encoding the clip's audio (once per clip) and of generating its
  tokens with the key/value cache and with full recomputation of the prefix for every token (as
  the reference's `generate`), and ms per generated token for both.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from a2p.bench.flops import count_flops, flops_and_result, format_count
from a2p.bench.timing import time_in_turns
from a2p.config.denoiser import denoiser_preset
from a2p.config.guide import guide_preset
from a2p.config.vq import vq_preset
from a2p.constants import AUDIO_CHANNELS, FPS, KEYFRAME_INTERVAL, POSE_DIM, SAMPLES_PER_FRAME
from a2p.diffusion.guidance import cfg_combine
from a2p.models.audio import build_featurizer
from a2p.models.denoiser import build_denoiser
from a2p.models.guide import GuideTransformer, build_guide
from a2p.models.vq import build_vq

MODELS = ("face", "body", "vq", "guide")

GUIDANCE_SCALE = {"face": 10.0, "body": 2.0}
"""The paper's CFG scales; they change no cost, only what the combined output is."""

DIFFUSION_T = 500
"""The timestep every timed step denoises at (cost does not depend on it)."""


@dataclass
class FlopLine:
    """One line of the size table: a counted computation of a model."""

    flops: int
    counted: str


@dataclass
class StepTiming:
    """ms per denoising step of both paths, and the FLOPs each path spends per step."""

    a2p_ms: float
    reference_ms: float
    once_ms: float
    a2p_flops: int
    reference_flops: int


@dataclass
class TokenTiming:
    """ms per generated guide token with the key/value cache and with full recomputation."""

    tokens: int
    batch: int
    once_ms: float
    cached_ms: float
    full_ms: float


@dataclass
class Report:
    """What one model contributes to the tables."""

    model: str
    params: int | None = None
    flops: list[FlopLine] = field(default_factory=list)
    step: StepTiming | None = None
    tokens: TokenTiming | None = None


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, int]:
    """Median wall time (ms) of `repeats` calls of `fn`, and the FLOPs of the warm-up call."""
    (ms,), (flops,) = time_interleaved([fn], repeats, device)
    return ms, flops


def time_interleaved(
    fns: list[Callable[[], object]], repeats: int, device: torch.device
) -> tuple[list[float], list[int]]:
    """Median wall times (ms) of `repeats` calls of each of `fns`, taking turns, and the FLOPs of
    their warm-up calls."""
    flops = [flops_and_result(fn)[0] for fn in fns]  # the warm-up calls, counted
    spent = time_in_turns(fns, repeats, device=device)
    return [statistics.median(seconds) * 1000.0 for seconds in spent], flops


@dataclass
class Setup:
    """What every bench function shares."""

    frames: int
    reps: int
    steps: int
    preset: str
    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator).to(self.device)

    def audio(self, batch: int = 1) -> torch.Tensor:
        """Stereo 48 kHz audio (batch, frames * 1600, 2) in [-1, 1]."""
        samples = self.frames * SAMPLES_PER_FRAME
        return (torch.rand(batch, samples, AUDIO_CHANNELS, generator=self.generator) * 2 - 1).to(self.device)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


def bench_denoiser(name: str, setup: Setup) -> Report:
    config = denoiser_preset(name, setup.preset)
    model = build_denoiser(config).to(setup.device).eval().requires_grad_(False)
    featurizer = build_featurizer("mel").to(setup.device)
    reps, scale = setup.reps, GUIDANCE_SCALE[name]
    audio = setup.audio()
    guide = setup.randn(1, setup.frames // KEYFRAME_INTERVAL, config.guide_dim) if model.has_guide else None
    x_t = setup.randn(reps, setup.frames, config.motion_dim)  # (R, T, D)
    t = torch.full((reps,), DIFFUSION_T, dtype=torch.long, device=setup.device)
    keep = torch.ones(1, dtype=torch.bool, device=setup.device)

    with torch.inference_mode(), setup.autocast():
        featurize_flops, features = flops_and_result(lambda: featurizer(audio))  # (1, T_audio, D_audio)
        encode_flops, condition = flops_and_result(lambda: model.encode_condition(features, guide))
        step_flops = count_flops(lambda: model(x_t[:1], t[:1], condition))
        guide_text = f" + guide {tuple(guide.shape)}" if guide is not None else ""
        flops = [
            FlopLine(
                featurize_flops, f"featurize audio {tuple(audio.shape)} (mel projection; FFT not counted)"
            ),
            FlopLine(encode_flops, f"encode condition: audio features {tuple(features.shape)}{guide_text}"),
            FlopLine(step_flops, f"one denoising forward of x_t {tuple(x_t[:1].shape)}"),
        ]

        def encode_once():
            condition = model.encode_condition(featurizer(audio), guide)
            condition = condition.map(lambda x: x.expand(reps, *x.shape[1:]))
            return model.expand_for_cfg(condition)  # (2R, ...): conditional rows, then null rows

        once_ms, _ = time_ms(encode_once, setup.steps, setup.device)
        cfg_condition = encode_once()
        x_cfg, t_cfg = torch.cat([x_t, x_t]), torch.cat([t, t])

        def a2p_step():
            cond, uncond = model(x_cfg, t_cfg, cfg_condition).chunk(2)
            return cfg_combine(cond, uncond, scale)

        def reference_step():
            outs = []
            for rep in range(reps):
                x, step = x_t[rep : rep + 1], t[rep : rep + 1]
                cond = model(x, step, model.encode_condition(featurizer(audio), guide, keep))
                uncond = model(x, step, model.encode_condition(featurizer(audio), guide, ~keep))
                outs.append(cfg_combine(cond, uncond, scale))
            return torch.cat(outs)

        (a2p_ms, reference_ms), (a2p_flops, reference_flops) = time_interleaved(
            [a2p_step, reference_step], setup.steps, setup.device
        )
    step = StepTiming(a2p_ms, reference_ms, once_ms, a2p_flops, reference_flops)
    return Report(name, parameter_count(model), flops, step=step)


def bench_vq(setup: Setup) -> Report:
    model = build_vq(vq_preset(setup.preset)).to(setup.device).eval().requires_grad_(False)
    keyframes = setup.randn(1, setup.frames // KEYFRAME_INTERVAL, POSE_DIM)  # (1, K, 104)
    with torch.inference_mode(), setup.autocast():
        flops = count_flops(lambda: model.decode_codes(model.encode(keyframes)))
    line = FlopLine(flops, f"encode + decode of keyframes {tuple(keyframes.shape)}")
    return Report("vq", parameter_count(model), [line])


@contextmanager
def audio_encoded_beforehand(model: GuideTransformer, features: torch.Tensor) -> Iterator[None]:
    """Inside, `model.generate` reuses the memory of `features` instead of encoding its audio.

    The audio is encoded once per clip whatever the decoding does; taking it out of the timed
    calls leaves the cost of the token loop itself, with or without the key/value cache.
    """
    memory = model.encode_audio(features)
    model.encode_audio = lambda features, keep_mask=None: memory
    try:
        yield
    finally:
        del model.encode_audio


def bench_guide(setup: Setup) -> Report:
    model = build_guide(guide_preset(setup.preset)).to(setup.device).eval().requires_grad_(False)
    featurizer = build_featurizer("mel").to(setup.device)
    keyframes = setup.frames // KEYFRAME_INTERVAL
    tokens = keyframes * model.config.levels

    def generate(features: torch.Tensor, use_cache: bool) -> Callable[[], object]:
        generator = torch.Generator(device=setup.device).manual_seed(0)
        return lambda: model.generate(features, keyframes, use_cache=use_cache, generator=generator)

    with torch.inference_mode(), setup.autocast():
        one = featurizer(setup.audio())  # (1, T_audio, D_audio)
        encode_flops = count_flops(lambda: model.encode_audio(one))
        with audio_encoded_beforehand(model, one):
            cached_flops = count_flops(generate(one, use_cache=True))
            full_flops = count_flops(generate(one, use_cache=False))
        batch = one.expand(setup.reps, *one.shape[1:])  # (R, T_audio, D_audio): repetitions together
        once_ms, _ = time_ms(lambda: model.encode_audio(batch), setup.steps, setup.device)
        with audio_encoded_beforehand(model, batch):
            (cached_ms, full_ms), _ = time_interleaved(
                [generate(batch, use_cache=True), generate(batch, use_cache=False)], setup.steps, setup.device
            )
    levels = model.config.levels
    flops = [
        FlopLine(encode_flops, f"encode audio features {tuple(one.shape)}: conv stack + cross-attention k/v"),
        FlopLine(
            cached_flops, f"generate {tokens} tokens ({keyframes} keyframes x {levels} levels), KV cache"
        ),
        FlopLine(full_flops, f"generate {tokens} tokens, full recomputation of the prefix per token"),
    ]
    timing = TokenTiming(tokens, setup.reps, once_ms, cached_ms / tokens, full_ms / tokens)
    return Report("guide", parameter_count(model), flops, tokens=timing)


def table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Plain aligned text: columns in `right` right-aligned, the last one never padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def render(reports: list[Report], setup: Setup, threads: int) -> str:
    clip = f"{setup.frames} frames ({setup.frames / FPS:.1f} s)"
    out = [
        f"a2p bench models: preset={setup.preset}, clip={clip}, reps={setup.reps}, "
        f"device={setup.device}, dtype={str(setup.dtype).removeprefix('torch.')}",
        machine_line(threads),
        "",
        f"Size and forward FLOPs per clip of {clip}, batch 1",
        "(matmul, conv and attention, 2 FLOPs per multiply-add):",
    ]
    rows = []
    for r in reports:
        for i, line in enumerate(r.flops):
            rows.append(
                [
                    r.model if i == 0 else "",
                    format_count(r.params) if i == 0 else "",
                    format_count(line.flops),
                    line.counted,
                ]
            )
    out += table(["model", "params", "FLOPs", "counted"], rows, right={1, 2})

    steps = [r for r in reports if r.step is not None]
    if steps:
        out += [
            "",
            f"ms per denoising step of {setup.reps} reps with CFG, median of {setup.steps} after 1 warm-up,"
            " the paths taking turns:",
            "  a2p:       audio featurized and condition encoded once per clip, with the null rows",
            f"             (column 'once', ms per clip); then each step is ONE forward of {setup.reps} reps x 2"
            f" = {2 * setup.reps} rows",
            "             (conditional rows, then unconditional)",
            f"  reference: reps in turn; each step runs {setup.reps} x 2 forwards of 1 row (conditional,"
            " unconditional),",
            "             each featurizing the audio and re-encoding the condition first",
        ]
        rows = [
            [
                r.model,
                format_ms(r.step.once_ms),
                format_ms(r.step.a2p_ms),
                format_ms(r.step.reference_ms),
                f"{r.step.reference_ms / r.step.a2p_ms:.2f}x",
                format_count(r.step.a2p_flops),
                format_count(r.step.reference_flops),
            ]
            for r in steps
        ]
        header = [
            "model",
            "once ms",
            "a2p ms/step",
            "ref ms/step",
            "ratio",
            "a2p FLOPs/step",
            "ref FLOPs/step",
        ]
        out += table(header, rows, right=set(range(1, 7)))

    tokens = [r for r in reports if r.tokens is not None]
    if tokens:
        out += [
            "",
            f"Guide generation of {setup.reps} reps in one batch, ms per token, median of {setup.steps}"
            " generations after 1 warm-up, taking turns:",
            "  audio encoded once per clip beforehand (column 'audio ms', ms per clip); then the token loop",
            "  with the key/value cache (one new position per token) or recomputing every position for",
            "  every token (the reference's generate)",
        ]
        rows = [
            [
                r.model,
                str(r.tokens.tokens),
                str(r.tokens.batch),
                format_ms(r.tokens.once_ms),
                f"{r.tokens.cached_ms:.2f}",
                f"{r.tokens.full_ms:.2f}",
                f"{r.tokens.full_ms / r.tokens.cached_ms:.2f}x",
            ]
            for r in tokens
        ]
        header = ["model", "tokens", "batch", "audio ms", "KV cache ms/token", "full ms/token", "ratio"]
        out += table(header, rows, right=set(range(1, 7)))
    out += ["", "ratio = reference (or full recomputation) ms / a2p (or KV cache) ms."]
    return "\n".join(out)


def format_ms(ms: float) -> str:
    """Milliseconds to 0.1, or to 0.01 below 10 ms."""
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def machine_line(threads: int) -> str:
    """The `machine:` line of a bench's header: system, CPU, torch threads, torch and python versions."""
    cpu = platform.processor() or platform.machine()
    return (
        f"machine: {platform.system()} {cpu} ({cpu_name()}), torch threads={threads}, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


@contextmanager
def threads_and_seed(threads: int | None, seed: int) -> Iterator[None]:
    """Inside, torch uses `threads` CPU threads (if given) and its global RNG is seeded with `seed`
    (weights are drawn from it); the caller's thread count and RNG state come back after."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(saved)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench models", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models to measure")
    parser.add_argument(
        "--preset", default="a2p", choices=["a2p", "debug"], help="a2p: its models at the paper's sizes"
    )
    parser.add_argument("--frames", type=int, default=8 * FPS, help="clip length in frames (240 = 8 s)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions sampled together (the reference: 3)")
    parser.add_argument("--steps", type=int, default=5, help="timed calls per path, after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < KEYFRAME_INTERVAL or args.frames % KEYFRAME_INTERVAL:
        print(f"error: --frames must be a positive multiple of {KEYFRAME_INTERVAL}", file=sys.stderr)
        return 2
    with threads_and_seed(args.threads, args.seed):  # seeds the weights, then restores the caller's RNG
        setup = Setup(
            frames=args.frames,
            reps=args.reps,
            steps=args.steps,
            preset=args.preset,
            device=torch.device(args.device),
            dtype=getattr(torch, args.dtype),
            generator=torch.Generator().manual_seed(args.seed),
        )
        benches = {"vq": bench_vq, "guide": bench_guide}
        reports = [
            bench_denoiser(name, setup) if name in GUIDANCE_SCALE else benches[name](setup)
            for name in dict.fromkeys(args.models)
        ]
        print(render(reports, setup, torch.get_num_threads()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
