"""`a2p bench sample`: seconds per clip of a2p's sampler against a reference-style loop.

One clip of `--seconds` (8) of stereo 48 kHz audio, `--reps` (3) repetitions, guidance 10 (face)
and 2 (body), per sampler setting (`ddim500`, the paper's, and `dpmpp25`), with random weights of
the `--preset` sizes (weights change no cost):

- a2p: `a2p.inference.Pipeline.sample`, what `a2p sample` runs: audio featurized once; guide
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
import sys

import numpy as np
import torch
from torch import Tensor

from a2p.bench.models import Setup, threads_and_seed
from a2p.bench.sample_report import (
    DENOISERS,
    GUIDE,
    GUIDE_AUDIO,
    ONCE,
    PARALLEL_SAMPLER,
    STEPS,
    WALL,
    WARMUP_STEPS,
    PathTiming,
    Row,
    describe_run,
    render,
)
from a2p.bench.timing import Stopwatch, Timed
from a2p.config.audio import REFERENCE_FEATURIZERS
from a2p.config.denoiser import denoiser_preset
from a2p.config.guide import guide_preset
from a2p.config.vq import vq_preset
from a2p.constants import FPS, KEYFRAME_INTERVAL, SAMPLES_PER_FRAME
from a2p.errors import ConfigError
from a2p.inference.pipeline import DEFAULT_GUIDANCE, GUIDE_TOP_P, Models, Pipeline
from a2p.models.audio import build_featurizer
from a2p.models.denoiser import build_denoiser
from a2p.models.export import Exported
from a2p.models.frontend import FrontEnd, ReferenceFeatures, SharedFeatures
from a2p.models.guide import build_guide
from a2p.models.vq import build_vq
from a2p.sampling.clip import clip_model
from a2p.sampling.reference import generate_guide_reference, reference_model, sample_motion_reference
from a2p.sampling.settings import SamplerSetting, setting_schedule

DEFAULT_SETTINGS = ("ddim500", "dpmpp25")
CPU_MEASURE_STEPS = 5
"""Denoising steps timed per setting on a CPU, where all 500 of ddim500 would take hours."""
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
"""torch.compile modes for the a2p denoisers; reduce-overhead and max-autotune use CUDA graphs on a GPU."""


def build_models(setup: Setup, compile_mode: str | None) -> tuple[Models, Models]:
    """Random-weight models of `setup.preset` on its device: (for the a2p path, for the reference's).

    Both hold the same weights; the a2p path's denoisers are compiled when `compile_mode` is set.
    """

    reference = setup.preset == "paper"

    def exported(task: str, model: torch.nn.Module) -> Exported:
        model = model.to(setup.device).eval().requires_grad_(False)
        featurizer = REFERENCE_FEATURIZERS.get(task, "") if reference else "mel"
        return Exported(task, {"featurizer": featurizer}, model, step=0, weights="random")

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


def build_front_end(setup: Setup) -> FrontEnd:
    """The audio front end of the preset's models, random weights: the reference's (vq-wav2vec, and
    the lip regressor for the face) for `paper`, a2p's mel featurizer otherwise."""
    front_end = (
        ReferenceFeatures.random() if setup.preset == "paper" else SharedFeatures(build_featurizer("mel"))
    )
    return front_end.to(setup.device).eval()


def first_step_x0(
    fast: Models,
    eager: Models,
    front_end: FrontEnd,
    audio: Tensor,
    guides: list[Tensor],
    setup: Setup,
    setting: str,
    seed: int,
) -> dict[str, float]:
    """max |x0 a2p - x0 reference| / std(x0 reference) of each denoiser at the first step of `setting`,
    from the same x_T: a2p's condition encoded once with CFG rows batched (under its autocast), the
    reference's featurizing and encoding in the call, each repetition alone, two passes."""
    _, schedule = setting_schedule(setting, setup.device)
    reps, frames = len(guides), audio.shape[1] // SAMPLES_PER_FRAME
    features = front_end(audio)
    generator = torch.Generator().manual_seed(seed)
    errors = {}
    for part in DENOISERS:
        fast_model, model = getattr(fast, part).model, getattr(eager, part).model
        guide = torch.cat(guides) if part == "body" else None
        x_t = torch.randn(reps, frames, model.config.motion_dim, generator=generator).to(setup.device)
        t = schedule.timesteps[-1:].expand(reps)
        with setup.autocast():
            a2p = clip_model(fast_model, features[part], guide, reps, DEFAULT_GUIDANCE[part])(x_t, t).float()
        featurize = front_end.featurizer_for(part)
        reference = torch.cat([
            reference_model(model, featurize, audio, None if guide is None else guide[r : r + 1],
                            DEFAULT_GUIDANCE[part])(x_t[r : r + 1], t[:1])
            for r in range(reps)
        ])  # fmt: skip
        errors[part] = float((a2p - reference).abs().max() / reference.std())
    return errors


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
    models: Models, front_end: FrontEnd, audio: np.ndarray, setup: Setup, setting: str, seed: int
) -> dict[str, float]:
    """Seconds per label of `Pipeline.sample` on one clip, under the a2p path's autocast."""
    stopwatch = Stopwatch(setup.device)
    pipeline = Pipeline(timed_models(models, stopwatch), front_end, setup.device)
    with stopwatch.lap(WALL), setup.autocast():
        pipeline.sample(audio, reps=setup.reps, setting=setting, seed=seed)
    return stopwatch.seconds()


def reference_guides(
    models: Models, front_end: FrontEnd, audio: Tensor, reps: int, seed: int
) -> tuple[list[Tensor], dict[str, float]]:
    """Keyframe poses (1, K, 104) of each repetition in turn, as the reference made them, and the
    seconds per label they took."""
    stopwatch = Stopwatch(audio.device)
    keyframes = math.ceil(audio.shape[1] // SAMPLES_PER_FRAME / KEYFRAME_INTERVAL)
    guide = Timed(models.guide.model, stopwatch, {"encode_audio": GUIDE_AUDIO})
    featurize = stopwatch.timed(GUIDE_AUDIO, front_end.featurizer_for("guide"))
    guides = []
    with stopwatch.lap(WALL):
        for rep in range(reps):
            generator = torch.Generator(device=audio.device).manual_seed(seed * 7919 + rep)
            with stopwatch.lap(GUIDE):
                codes = generate_guide_reference(
                    guide, featurize, audio, keyframes, top_p=GUIDE_TOP_P, generator=generator
                )
                guides.append(models.vq.model.decode_codes(codes))
    seconds = stopwatch.seconds()
    seconds[GUIDE] -= seconds[GUIDE_AUDIO]  # the audio laps lie inside the guide laps
    return guides, seconds


def time_reference_diffusion(
    models: Models, front_end: FrontEnd, audio: Tensor, guides: list[Tensor], setting: str, seed: int
) -> dict[str, float]:
    """Seconds per label of the reference's body (per repetition, its own guide) and face diffusion."""
    stopwatch = Stopwatch(audio.device)
    frames = audio.shape[1] // SAMPLES_PER_FRAME
    with stopwatch.lap(WALL):
        for rep, guide in enumerate(guides):  # the reference ran the body model once per repetition
            with stopwatch.lap(f"body {STEPS}"):
                sample_motion_reference(
                    models.body.model,
                    front_end.featurizer_for("body"),
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
                front_end.featurizer_for("face"),
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
) -> tuple[list[Row], dict[str, float]]:
    """A row per setting: both paths timed `repeats` times, taking turns, their fastest runs kept;
    and each denoiser's first-step x0 difference between the paths (`first_step_x0`)."""
    fast, eager = build_models(setup, compile_mode)
    front_end = build_front_end(setup)
    audio = setup.audio()  # (1, S, 2) on the device, for the reference path
    audio_host = audio[0].cpu().numpy()  # (S, 2), what `a2p sample` reads from a file
    warmup = with_steps(settings[0], WARMUP_STEPS)
    with torch.inference_mode():  # warm-ups, untimed, then the reference's guide stage, timed once
        time_a2p(fast, front_end, audio_host, setup, warmup, seed)
        generator = torch.Generator(setup.device)
        generate_guide_reference(
            eager.guide.model,
            front_end.featurizer_for("guide"),
            audio,
            1,
            top_p=GUIDE_TOP_P,
            generator=generator,
        )
        # the guide stage is setting-independent: counted in every row
        guides, guide_seconds = reference_guides(eager, front_end, audio, setup.reps, seed)
        x0_errors = first_step_x0(fast, eager, front_end, audio, guides, setup, settings[0], seed)
        time_reference_diffusion(eager, front_end, audio, guides[:1], warmup, seed)
        rows = []
        for setting in settings:
            run, timed_steps, steps = timed_setting(setting, measure_steps)
            a2p_runs, reference_runs = [], []
            for _ in range(repeats):  # the paths take turns, so a change of machine load slows both alike
                a2p = time_a2p(fast, front_end, audio_host, setup, run, seed)
                a2p_runs.append(PathTiming(a2p, timed_steps, steps))
                reference = time_reference_diffusion(eager, front_end, audio, guides, run, seed)
                reference = {**guide_seconds, **reference, WALL: guide_seconds[WALL] + reference[WALL]}
                reference_runs.append(PathTiming(reference, timed_steps, steps))
            rows.append(Row(setting, fastest_run(a2p_runs), fastest_run(reference_runs)))
    return rows, x0_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench sample", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        default="paper",
        choices=["paper", "a2p", "debug"],
        help="paper: the released architecture and the reference's audio front end; a2p: a2p's models "
        "at the paper's sizes (mel features); debug: tiny",
    )
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
        rows, x0_errors = bench(
            setup,
            args.settings,
            measure_steps=measure_steps,
            repeats=args.repeats,
            compile_mode=args.compile,
            seed=args.seed,
        )
        loads = (load, os.getloadavg()[0])
        header = describe_run(setup, args.compile, torch.get_num_threads(), args.repeats, loads)
    print(render(rows, setup, header, x0_errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
