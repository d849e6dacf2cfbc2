"""`a2p bench quality`: which fast sampling settings keep the paper's metrics, and what they cost.

    a2p bench quality --face F --body B --guide G --vq V --data SHARDS/PERSON [--split test]
                      [--settings ddim500 ddim100 ddim50 dpmpp25 dpmpp20 ...] [--reps 3]

Each setting samples the split's 600-frame chunks (`a2p sample --data`) with `--reps` seeds and is
scored by `a2p eval`. The first setting is the reference (ddim500, guidance 10 face / 2 body). A
setting passes when every metric's mean over its seeds lies within `--tolerance` (default 2)
seed-to-seed standard deviations of the reference's mean, for body and face. A `+bf16` suffix runs
the networks under bfloat16 autocast. Prints seconds per clip, every metric and the verdict.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from a2p.bench.models import table
from a2p.bench.timing import timed_call
from a2p.evaluation.run import PARTS, REPORTED, evaluate
from a2p.inference.clips import split_clips
from a2p.inference.job import RunSettings, run
from a2p.inference.pipeline import Pipeline
from a2p.sampling import SamplerSetting

DEFAULT_SETTINGS = ("ddim500", "ddim100", "ddim50", "dpmpp25", "dpmpp20")
GPU_SETTINGS = ("dpmpp25+bf16", "paraddim500")
"""Added on a GPU: bf16 autocast, and parallel-in-time DDIM (more compute, fewer sequential calls)."""


@dataclass
class Outcome:
    """One setting's cost and metrics."""

    setting: str
    seconds_per_clip: float
    clips: int
    report: dict[str, Any]
    passed: bool | None = None
    failures: list[str] | None = None


def parse(setting: str) -> tuple[str, bool]:
    """('dpmpp25', True) for 'dpmpp25+bf16'; the sampler part is checked."""
    name, _, extra = setting.partition("+")
    if extra not in ("", "bf16"):
        raise SystemExit(f"error: unknown setting suffix +{extra} in {setting!r} (only +bf16)")
    SamplerSetting.parse(name)
    return name, extra == "bf16"


def verdict(outcome: Outcome, reference: Outcome, tolerance: float) -> list[str]:
    """The metrics of `outcome` whose mean lies further than tolerance x the reference's spread."""
    failures = []
    for part in PARTS:
        for name in REPORTED:
            ref, got = reference.report[part][name], outcome.report[part][name]
            if abs(got["mean"] - ref["mean"]) > tolerance * ref["spread"] + 1e-12:
                failures.append(f"{part}.{name}")
    return failures


def sample_setting(
    pipeline: Pipeline,
    data: str,
    split: str,
    setting: str,
    reps: int,
    seed: int,
    device: torch.device,
    out: Path,
) -> Outcome:
    name, bf16 = parse(setting)
    settings = RunSettings(reps=reps, setting=name, seed=seed, bf16=bf16)
    summary, seconds = timed_call(
        lambda: run(split_clips(data, split), pipeline, out, settings, rank=0, world_size=1, device=device),
        device,
    )
    clips = len(summary.assembled)
    return Outcome(setting, seconds / max(clips, 1), clips, evaluate(data, out, split, seed=seed))


def render(outcomes: list[Outcome], tolerance: float) -> str:
    header = ["setting", "s/clip"] + [f"{p}.{m}" for p in PARTS for m in REPORTED] + ["verdict"]
    rows = []
    for o in outcomes:
        cells = [o.setting, f"{o.seconds_per_clip:.2f}"]
        for part in PARTS:
            for name in REPORTED:
                metric = o.report[part][name]
                cells.append(f"{metric['mean']:.4g}±{metric['spread']:.2g}")
        if o.passed is None:
            cells.append("reference")
        else:
            cells.append("pass" if o.passed else "FAIL: " + ", ".join(o.failures or []))
        rows.append(cells)
    lines = table(header, rows, right={1})
    lines.append(
        f"\npass: every metric's mean within {tolerance:g} x the reference's seed-to-seed std of its mean"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench quality", description=__doc__.splitlines()[0])
    for name in ("face", "body", "guide", "vq"):
        parser.add_argument(f"--{name}", required=True, help=f"exported {name} model")
    parser.add_argument("--data", required=True, help="shard set (SHARDS/PERSON)")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help=f"the first is the reference (default: {' '.join(DEFAULT_SETTINGS)}, and on a GPU {' '.join(GPU_SETTINGS)})",
    )
    parser.add_argument("--reps", type=int, default=3, help="seeds per setting (at least 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=2.0, help="allowed distance in reference stds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=Path, help="keep the sampled outputs under this folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.settings is None:
        args.settings = list(DEFAULT_SETTINGS) + (
            list(GPU_SETTINGS) if args.device.startswith("cuda") else []
        )
    if args.reps < 2:
        raise SystemExit("error: --reps must be at least 2 (the spread needs seeds)")
    for setting in args.settings:
        parse(setting)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipeline = Pipeline.from_exports(
        face=args.face, body=args.body, guide=args.guide, vq=args.vq, device=device
    )
    root = args.keep or Path(tempfile.mkdtemp(prefix="a2p_quality_"))
    outcomes = []
    try:
        for setting in args.settings:
            out = root / setting
            if out.exists():
                shutil.rmtree(out)  # timings are only honest for fresh samples
            outcome = sample_setting(
                pipeline, args.data, args.split, setting, args.reps, args.seed, device, out
            )
            if outcomes:
                outcome.failures = verdict(outcome, outcomes[0], args.tolerance)
                outcome.passed = not outcome.failures
            outcomes.append(outcome)
            print(f"{setting}: {outcome.seconds_per_clip:.2f} s/clip over {outcome.clips} clips", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n{args.data} {args.split} split, {outcomes[0].clips} clips of 600 frames, {args.reps} seeds, {device}:\n"
    )
    print(render(outcomes, args.tolerance))
    reference_seconds = outcomes[0].seconds_per_clip
    passing = [o for o in outcomes[1:] if o.passed and o.seconds_per_clip < reference_seconds]
    if passing:
        fastest = min(passing, key=lambda o: o.seconds_per_clip)
        print(f"fastest passing setting: {fastest.setting} ({fastest.seconds_per_clip:.2f} s/clip)")
    else:
        print("no setting both passed and ran faster than the reference here: keep the reference setting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
