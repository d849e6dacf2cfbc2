"""`a2p bench sample`: seconds per clip of a2p's sampler against a reference-style loop.

One clip of `--seconds` (8) of stereo 48 kHz audio, `--reps` (3) repetitions, guidance 10 (face)
and 2 (body), per sampler setting (`ddim500`, the paper's, and `dpmpp25`), with random weights of
the `--preset` sizes (weights change no cost):

- a2p: `a2p.inference.pipeline.sample_clip`, what `a2p sample` runs: audio featurized once; guide
  tokens of all repetitions in one batch with the key/value cache; VQ decode; body and face
  diffusion with the condition encoded once per clip and each step ONE forward of reps x 2 rows
  (conditional, unconditional). `--dtype` and `--compile` apply to this path.
- reference-style (facebookresearch/audio2photoreal, sample/generate.py), float32, eager:
  repetitions in turn; guide tokens of batch 1 without a cache, each token featurizing and
  encoding the audio again and recomputing every position (the reference's
  `GuideTransformer.generate` calling `forward`); VQ decode; every diffusion step featurizes the
  audio, re-encodes the condition and runs the conditional and unconditional passes separately
  (`a2p.sampling.reference.sample_motion_reference`).

Both paths run a2p's mel featurizer. The reference ran a frozen wav2vec conv encoder in those
places, which costs far more, so its real time per clip is higher than shown here.

`--measure-steps K` times K denoising steps of each setting with N steps, after a warm-up, and
extrapolates: seconds per clip = once-per-clip parts (featurizing, condition encoding, guide
tokens, VQ decode, glue) + the K steps' seconds x N / K. `--measure-steps 0` runs every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from a2p.bench.models import Setup, cpu_name, table, threads_and_seed
from a2p.config.denoiser import denoiser_preset
from a2p.config.guide import guide_preset
from a2p.config.vq import vq_preset
from a2p.constants import FPS, KEYFRAME_INTERVAL, SAMPLES_PER_FRAME
from a2p.errors import ConfigError
from a2p.inference.pipeline import DEFAULT_GUIDANCE, GUIDE_TOP_P, Models, sample_clip
from a2p.models.audio import build_featurizer
from a2p.models.denoiser import build_denoiser
from a2p.models.export import Exported
from a2p.models.guide import GuideTransformer, build_guide, draw_uniforms, sample_top_p
from a2p.models.vq import build_vq
from a2p.sampling.reference import sample_motion_reference
from a2p.sampling.settings import SamplerSetting

DEFAULT_SETTINGS = ("ddim500", "dpmpp25")
CPU_MEASURE_STEPS = 5
"""Denoising steps timed per setting on a CPU, where all 500 of ddim500 would take hours."""
WARMUP_STEPS = 2
"""Denoising steps of the untimed warm-up run of each path (two, so DPM-Solver++ uses its history)."""
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
"""torch.compile modes for the a2p denoisers; reduce-overhead and max-autotune use CUDA graphs on a GPU."""

WALL = "wall"
GUIDE, GUIDE_AUDIO = "guide", "guide audio"
ONCE, STEPS = "once", "steps"
"""Stopwatch labels: the whole path, the guide stage (and the reference's per-token audio
encoding in it), and per denoiser `f"{model} {ONCE}"` / `f"{model} {STEPS}"`."""
DENOISERS = ("body", "face")
PARALLEL_SAMPLER = "picard_ddim"
"""`SamplerSetting.sampler` of `paraddimN`, whose model calls depend on how fast it converges."""


class Stopwatch:
    """Seconds spent per label; on CUDA timed with events, so timing adds no synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._laps: list[tuple[str, Any, Any]] = []

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @contextmanager
    def lap(self, label: str) -> Iterator[None]:
        start = self._mark()
        yield
        self._laps.append((label, start, self._mark()))

    def timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, each call timed under `label`."""

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.lap(label):
                return fn(*args, **kwargs)

        return call

    def seconds(self) -> dict[str, float]:
        """Total seconds per label (waits for the device first)."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for label, start, end in self._laps:
            totals[label] += start.elapsed_time(end) / 1000.0 if self.cuda else end - start
        return dict(totals)


class Timed:
    """Stands in for a model inside `sample_clip`: calls of the methods named in `labels` (the
    model itself: `__call__`) are timed under their label; everything else passes through."""

    def __init__(self, target: Any, stopwatch: Stopwatch, labels: dict[str, str]) -> None:
        self._target, self._stopwatch, self._labels = target, stopwatch, labels

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        label = self._labels.get(name)
        return value if label is None else self._stopwatch.timed(label, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._stopwatch.timed(self._labels["__call__"], self._target)(*args, **kwargs)


def extrapolate(once_s: float, steps_s: float, timed_steps: int, steps: int) -> float:
    """Seconds per clip of `steps` denoising steps, from `steps_s` timed over `timed_steps` of them
    plus `once_s` spent once per clip whatever the step count."""
    if timed_steps <= 0:
        raise ValueError(f"timed_steps must be positive, got {timed_steps}")
    return once_s + steps_s * steps / timed_steps


@dataclass
class PathTiming:
    """What one path spent on one clip: seconds per stopwatch label as timed over `timed_steps`
    of the setting's `steps` denoising steps, the whole path under `WALL`."""

    seconds: dict[str, float]
    timed_steps: int
    steps: int

    def guide(self) -> float:
        return self.seconds.get(GUIDE, 0.0) + self.seconds.get(GUIDE_AUDIO, 0.0)

    def denoiser(self, model: str) -> float:
        once, steps = (self.seconds.get(f"{model} {part}", 0.0) for part in (ONCE, STEPS))
        return extrapolate(once, steps, self.timed_steps, self.steps)

    def ms_per_step(self, model: str) -> float:
        return 1000.0 * self.seconds.get(f"{model} {STEPS}", 0.0) / self.timed_steps

    def other(self) -> float:
        """Featurizing once (a2p), noise, sampler arithmetic, copies: counted once per clip."""
        return self.seconds[WALL] - sum(v for k, v in self.seconds.items() if k != WALL)

    def per_clip(self) -> float:
        return self.guide() + sum(self.denoiser(m) for m in DENOISERS) + self.other()


@dataclass
class Row:
    """One sampler setting's timings on both paths."""

    setting: str
    a2p: PathTiming
    reference: PathTiming

    @property
    def extrapolated(self) -> bool:
        return self.a2p.timed_steps < self.a2p.steps


def build_models(setup: Setup, compile_mode: str | None) -> tuple[Models, Models]:
    """Random-weight models of `setup.preset` on its device: (for the a2p path, for the reference's).

    Both hold the same weights; the a2p path's denoisers are compiled when `compile_mode` is set.
    """

    def exported(task: str, model: torch.nn.Module) -> Exported:
        model = model.to(setup.device).eval().requires_grad_(False)
        return Exported(task, {"featurizer": "mel"}, model, step=0, weights="random")

    eager = Models(
        face=exported("face", build_denoiser(denoiser_preset("face", setup.preset))),
        body=exported("body", build_denoiser(denoiser_preset("body", setup.preset))),
        guide=exported("guide", build_guide(guide_preset(setup.preset))),
        vq=exported("vq", build_vq(vq_preset(setup.preset))),
    )
    if compile_mode is None:
        return eager, eager
    compiled = {m: torch.compile(getattr(eager, m).model, mode=compile_mode) for m in DENOISERS}
    fast = dataclasses.replace(
        eager, **{m: dataclasses.replace(getattr(eager, m), model=compiled[m]) for m in DENOISERS}
    )
    return fast, eager


def timed_models(models: Models, stopwatch: Stopwatch) -> Models:
    """`models` whose guide, VQ and denoiser calls are timed under the stopwatch's labels."""

    def timed(exported: Exported, labels: dict[str, str]) -> Exported:
        return dataclasses.replace(exported, model=Timed(exported.model, stopwatch, labels))

    denoisers = {
        m: timed(
            getattr(models, m),
            {"encode_condition": f"{m} {ONCE}", "expand_for_cfg": f"{m} {ONCE}", "__call__": f"{m} {STEPS}"},
        )
        for m in DENOISERS
    }
    return dataclasses.replace(
        models,
        guide=timed(models.guide, {"generate": GUIDE}),
        vq=timed(models.vq, {"decode_codes": GUIDE}),
        **denoisers,
    )


def time_a2p(
    models: Models, featurizer: torch.nn.Module, audio: np.ndarray, setup: Setup, setting: str, seed: int
) -> dict[str, float]:
    """Seconds per label of `sample_clip` on one clip, under the a2p path's autocast."""
    stopwatch = Stopwatch(setup.device)
    with stopwatch.lap(WALL), setup.autocast():
        sample_clip(
            timed_models(models, stopwatch),
            featurizer,
            audio,
            reps=setup.reps,
            setting=setting,
            seed=seed,
            device=setup.device,
        )
    return stopwatch.seconds()


def reference_generate(
    model: GuideTransformer,
    featurizer: torch.nn.Module,
    audio: Tensor,
    keyframes: int,
    generator: torch.Generator,
    stopwatch: Stopwatch,
) -> Tensor:
    """Codes (1, keyframes, levels) as the reference's `generate` made them: for every token the
    audio (1, S, 2) is featurized and encoded again, then every position so far is recomputed."""
    levels = model.config.levels
    count = keyframes * levels
    uniforms = draw_uniforms(generator, 1, count, audio.device)  # (1, count)
    inputs = torch.full((1, 1), model.start_token, dtype=torch.long, device=audio.device)
    for step in range(count):
        with stopwatch.lap(GUIDE_AUDIO):
            memory = model.encode_audio(featurizer(audio))
        with stopwatch.lap(GUIDE):
            logits = model.decode(inputs, 0, memory)[:, -1].float()  # (1, codes)
            token = sample_top_p(logits, GUIDE_TOP_P, 1.0, uniforms[:, step])
            inputs = torch.cat((inputs, token[:, None]), dim=1)
    return inputs[:, 1:].view(1, keyframes, levels)


def reference_guides(
    models: Models, featurizer: torch.nn.Module, audio: Tensor, reps: int, seed: int, stopwatch: Stopwatch
) -> list[Tensor]:
    """Keyframe poses (1, K, 104) of each repetition in turn, as the reference made them."""
    keyframes = math.ceil(audio.shape[1] // SAMPLES_PER_FRAME / KEYFRAME_INTERVAL)
    guides = []
    with stopwatch.lap(WALL):
        for rep in range(reps):
            generator = torch.Generator(device=audio.device).manual_seed(seed * 7919 + rep)
            codes = reference_generate(models.guide.model, featurizer, audio, keyframes, generator, stopwatch)
            with stopwatch.lap(GUIDE):
                guides.append(models.vq.model.decode_codes(codes))
    return guides


def time_reference_diffusion(
    models: Models, featurizer: torch.nn.Module, audio: Tensor, guides: list[Tensor], setting: str, seed: int
) -> dict[str, float]:
    """Seconds per label of the reference's body (per repetition, its own guide) and face diffusion."""
    stopwatch = Stopwatch(audio.device)
    frames = audio.shape[1] // SAMPLES_PER_FRAME
    with stopwatch.lap(WALL):
        for rep, guide in enumerate(guides):  # the reference ran the body model once per repetition
            with stopwatch.lap(f"body {STEPS}"):
                sample_motion_reference(
                    models.body.model,
                    featurizer,
                    audio,
                    frames,
                    guide=guide,
                    setting=setting,
                    guidance=DEFAULT_GUIDANCE["body"],
                    seed=seed + rep,
                ).cpu()
        with stopwatch.lap(f"face {STEPS}"):
            sample_motion_reference(
                models.face.model,
                featurizer,
                audio,
                frames,
                reps=len(guides),
                setting=setting,
                guidance=DEFAULT_GUIDANCE["face"],
                seed=seed + 1,
            ).cpu()
    return stopwatch.seconds()


def timed_setting(setting: str, measure_steps: int) -> tuple[str, int, int]:
    """(the setting to run, its steps, the setting's full steps): the same sampler with
    `measure_steps` steps when that is fewer, else the setting itself (`measure_steps` 0: all)."""
    parsed = SamplerSetting.parse(setting)
    if measure_steps <= 0 or measure_steps >= parsed.steps:
        return setting, parsed.steps, parsed.steps
    if parsed.sampler == PARALLEL_SAMPLER:
        raise ConfigError(
            f"{setting}: parallel-in-time DDIM iterates until it converges, so its time cannot be "
            "extrapolated from fewer steps; run it with --measure-steps 0"
        )
    return with_steps(setting, measure_steps), measure_steps, parsed.steps


def with_steps(setting: str, steps: int) -> str:
    """The sampler of `setting` with `steps` steps (`ddim500`, 5 -> `ddim5`)."""
    return f"{setting.rstrip('0123456789')}{steps}"


def fastest_run(runs: list[PathTiming]) -> PathTiming:
    """The run with the fewest seconds per clip: other processes on the machine only add time."""
    return min(runs, key=PathTiming.per_clip)


def bench(
    setup: Setup,
    settings: list[str],
    *,
    measure_steps: int,
    repeats: int,
    compile_mode: str | None,
    seed: int,
) -> list[Row]:
    """A row per setting: both paths timed `repeats` times, taking turns, their fastest runs kept."""
    fast, eager = build_models(setup, compile_mode)
    featurizer = build_featurizer(fast.featurizer).to(setup.device)
    audio = setup.audio()  # (1, S, 2) on the device, for the reference path
    audio_host = audio[0].cpu().numpy()  # (S, 2), what `a2p sample` reads from a file
    warmup = with_steps(settings[0], WARMUP_STEPS)
    with torch.inference_mode():  # warm-ups, untimed, then the reference's guide stage, timed once
        time_a2p(fast, featurizer, audio_host, setup, warmup, seed)
        generator = torch.Generator(setup.device)
        reference_generate(eager.guide.model, featurizer, audio, 1, generator, Stopwatch(setup.device))
        guide_watch = Stopwatch(setup.device)
        guides = reference_guides(eager, featurizer, audio, setup.reps, seed, guide_watch)
        guide_seconds = guide_watch.seconds()  # setting-independent: counted in every row
        time_reference_diffusion(eager, featurizer, audio, guides[:1], warmup, seed)
        rows = []
        for setting in settings:
            run, timed_steps, steps = timed_setting(setting, measure_steps)
            a2p_runs, reference_runs = [], []
            for _ in range(repeats):  # the paths take turns, so a change of machine load slows both alike
                a2p = time_a2p(fast, featurizer, audio_host, setup, run, seed)
                a2p_runs.append(PathTiming(a2p, timed_steps, steps))
                reference = time_reference_diffusion(eager, featurizer, audio, guides, run, seed)
                reference = {**guide_seconds, **reference, WALL: guide_seconds[WALL] + reference[WALL]}
                reference_runs.append(PathTiming(reference, timed_steps, steps))
            rows.append(Row(setting, fastest_run(a2p_runs), fastest_run(reference_runs)))
    return rows


def format_s(seconds: float) -> str:
    """Seconds to three significant digits, never in exponent notation."""
    if seconds == 0 or not math.isfinite(seconds):
        return f"{seconds:.3f}"
    return f"{seconds:.{max(0, 2 - math.floor(math.log10(abs(seconds))))}f}"


def describe_run(
    setup: Setup, compile_mode: str | None, threads: int, repeats: int, loads: tuple[float, float]
) -> list[str]:
    """The header: what ran, on which machine, under what load."""
    keyframes = math.ceil(setup.frames / KEYFRAME_INTERVAL)
    guidance = f"face {DEFAULT_GUIDANCE['face']:g} / body {DEFAULT_GUIDANCE['body']:g}"
    turns = (
        f"per setting the paths took turns {repeats} times, the fastest run of each kept"
        if repeats > 1
        else "per setting each path ran once after the warm-up, a2p first"
    )
    busy = []
    if setup.device.type == "cpu" and threads > 1 and max(loads) >= (os.cpu_count() or 1):
        busy = [
            "warning: the CPUs were busy with other work; several torch threads then wait on each other and",
            "         inflate times unevenly (small batches most). --threads 1 gives steadier figures.",
        ]
    return [
        f"a2p bench sample: preset={setup.preset}, clip={setup.frames / FPS:g} s ({setup.frames} frames, "
        f"{keyframes} keyframes), reps={setup.reps}, guidance {guidance}, device={setup.device}",
        f"machine: {platform.system()} {platform.processor() or platform.machine()} ({cpu_name()}), "
        f"torch threads={threads}, torch {torch.__version__}, python {platform.python_version()}",
        f"load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f} on {os.cpu_count()} CPUs; {turns}",
        f"a2p path: dtype={str(setup.dtype).removeprefix('torch.')}, compile={compile_mode or 'off'}; "
        "reference-style path: float32, eager",
        *busy,
    ]


def render(rows: list[Row], setup: Setup, header: list[str]) -> str:
    reps = setup.reps
    out = [
        *header,
        "",
        "  a2p:       sample_clip (what `a2p sample` runs): audio featurized once; guide tokens of all reps in",
        "             one batch with the KV cache; VQ decode; body and face: condition encoded once, then",
        f"             each step ONE forward of {reps} reps x 2 = {2 * reps} rows (conditional, unconditional)",
        "  reference: reps in turn; guide tokens of batch 1 without a KV cache, the audio featurized and",
        "             encoded again for every token; VQ decode; every denoising step featurizes the audio,",
        f"             re-encodes the condition and runs {reps} x 2 forwards of 1 row (conditional, unconditional)",
        "",
        "Seconds per clip:",
    ]
    summary = []
    for row in rows:
        a2p, reference = row.a2p.per_clip(), row.reference.per_clip()
        timed = (
            f"extrapolated from {row.a2p.timed_steps} of {row.a2p.steps} steps"
            if row.extrapolated
            else f"measured, all {row.a2p.steps} steps"
        )
        summary.append([row.setting, format_s(a2p), format_s(reference), f"{reference / a2p:.2f}x", timed])
    out += table(["setting", "a2p s/clip", "ref s/clip", "ratio", "figures"], summary, right={1, 2, 3})

    out += ["", "Breakdown, seconds per clip; ms/step: one denoising step of all reps with CFG:"]
    breakdown = [
        [
            row.setting if path == "a2p" else "",
            path,
            *(format_s(x) for x in (timing.guide(), timing.denoiser("body"), timing.denoiser("face"))),
            format_s(timing.other()),
            *(f"{timing.ms_per_step(m):.1f}" for m in DENOISERS),
        ]
        for row in rows
        for path, timing in (("a2p", row.a2p), ("reference", row.reference))
    ]
    header = ["setting", "path", "guide+VQ", "body", "face", "other", "body ms/step", "face ms/step"]
    out += table(header, breakdown, right=set(range(2, 8)))

    reference = rows[0].reference
    out += [
        "",
        "ratio = reference s/clip / a2p s/clip.",
        f"The reference's guide stage ({format_s(reference.guide())} s, of which "
        f"{format_s(reference.seconds.get(GUIDE_AUDIO, 0.0))} s featurize and encode the audio again for "
        "every token)",
        "does not depend on the setting: it was timed once and counts in every row.",
        "other: featurizing the audio once (a2p), noise, sampler arithmetic, copies to the host; counted once.",
        "Both paths featurize with mel; the reference ran a wav2vec conv encoder there (every step, every",
        "token), so its real time per clip is higher than this reference-style loop's.",
    ]
    if any(SamplerSetting.parse(row.setting).sampler == PARALLEL_SAMPLER for row in rows):
        out += [
            "paraddimN: a2p runs parallel-in-time DDIM (Picard iterations until convergence), the reference-style",
            "loop plain DDIM. How many iterations converge depends on the weights: random ones are no guide to",
            "what trained models take.",
        ]
    if any(row.extrapolated for row in rows):
        out += [
            f"Extrapolated rows: each path ran K of the setting's N denoising steps (after a {WARMUP_STEPS}-step "
            "warm-up);",
            "s/clip = once-per-clip parts (featurize, condition encoding, guide+VQ, other) + the K steps' "
            "seconds x N / K.",
            "`--measure-steps 0` runs every step.",
        ]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench sample", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=["paper", "debug"], help="model sizes")
    parser.add_argument("--seconds", type=int, default=8, help="clip length in whole seconds")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per clip (the reference: 3)")
    parser.add_argument(
        "--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="sampler settings, ddimN or dpmppN"
    )
    parser.add_argument(
        "--measure-steps",
        type=int,
        default=None,
        help=f"denoising steps timed per setting, the rest extrapolated; 0: all "
        f"(default: {CPU_MEASURE_STEPS} on a CPU, all on a GPU)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype of the a2p path"
    )
    parser.add_argument(
        "--compile", default=None, choices=COMPILE_MODES, help="torch.compile the a2p path's denoisers"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs of each path per setting, taking turns; the fastest kept",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random audio, weights and noise")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.seconds, args.reps, args.repeats) < 1 or (args.measure_steps or 0) < 0:
        print(
            "error: --seconds, --reps and --repeats must be positive, --measure-steps not negative",
            file=sys.stderr,
        )
        return 2
    measure_steps = args.measure_steps
    if measure_steps is None:
        measure_steps = 0 if args.device == "cuda" else CPU_MEASURE_STEPS
    try:
        for setting in args.settings:
            timed_setting(setting, measure_steps)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with threads_and_seed(args.threads, args.seed):
        setup = Setup(
            frames=args.seconds * FPS,
            reps=args.reps,
            steps=measure_steps,
            preset=args.preset,
            device=torch.device(args.device),
            dtype=getattr(torch, args.dtype),
            generator=torch.Generator().manual_seed(args.seed),
        )
        load = os.getloadavg()[0]
        rows = bench(
            setup,
            args.settings,
            measure_steps=measure_steps,
            repeats=args.repeats,
            compile_mode=args.compile,
            seed=args.seed,
        )
        loads = (load, os.getloadavg()[0])
        header = describe_run(setup, args.compile, torch.get_num_threads(), args.repeats, loads)
    print(render(rows, setup, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
