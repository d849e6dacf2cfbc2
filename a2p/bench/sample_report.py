"""What `a2p bench sample` measured and how it is printed: stopwatch labels, per-path timings
extrapolated from the timed steps, and the report (summary, per-stage breakdown, notes)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from a2p.bench.models import Setup, machine_line, table
from a2p.constants import FPS, KEYFRAME_INTERVAL
from a2p.inference.pipeline import DEFAULT_GUIDANCE
from a2p.sampling.settings import SamplerSetting

WARMUP_STEPS = 2
"""Denoising steps of the untimed warm-up run of each path (two, so DPM-Solver++ uses its history)."""
WALL = "wall"
GUIDE, GUIDE_AUDIO = "guide", "guide audio"
ONCE, STEPS = "once", "steps"
"""Stopwatch labels: the whole path, the guide stage (and the reference's per-token audio
encoding in it), and per denoiser `f"{model} {ONCE}"` / `f"{model} {STEPS}"`."""
DENOISERS = ("body", "face")
PARALLEL_SAMPLER = "picard_ddim"
"""`SamplerSetting.sampler` of `paraddimN`, whose model calls depend on how fast it converges."""


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
        machine_line(threads),
        f"load average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f} on {os.cpu_count()} CPUs; {turns}",
        f"a2p path: dtype={str(setup.dtype).removeprefix('torch.')}, compile={compile_mode or 'off'}; "
        "reference-style path: float32, eager",
        *busy,
    ]


def front_end_lines(preset: str) -> list[str]:
    """What both paths featurize with, in the report's words."""
    if preset == "paper":
        return [
            "Audio front end (the reference's, random weights): vq-wav2vec's extractor on each channel of the",
            "waveform, and for the face the lip regressor (wav2vec large + its transformer); a2p runs them once",
            "per clip, the reference in every pass of every step and for every guide token.",
        ]
    return [
        "Both paths featurize with mel (a2p's models); the reference ran vq-wav2vec there (every step, every",
        "token), so its real time per clip is higher: `--preset paper` runs the reference's front end.",
    ]


def render(rows: list[Row], setup: Setup, header: list[str], x0_errors: dict[str, float]) -> str:
    reps = setup.reps
    out = [
        *header,
        "",
        "  a2p:       Pipeline.sample (what `a2p sample` runs): audio featurized once; guide tokens of all reps in",
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
        *front_end_lines(setup.preset),
        "First step of "
        + rows[0].setting
        + ", the same x_T, max |x0 a2p - x0 reference| / std(x0 reference): "
        + ", ".join(f"{part} {error:.2g}" for part, error in x0_errors.items()),
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
