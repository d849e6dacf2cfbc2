"""`a2p demo`: the whole mission end to end on a small synthesized dataset, on this machine.

synthesize recordings -> build shards (with mel features) -> verify them -> train tiny face, vq,
guide and body models on N processes each (TensorBoard in every run directory) -> export them ->
sample a short and a long clip on N processes (npz, PNG plots, the reference's results.npy) ->
sample the test split -> score it with `a2p eval` -> print where everything is.

Every step is the command a user types (`torchrun ... -m a2p.cli.train` for N processes,
`a2p ...` in this process otherwise), and its command line is logged before it runs. A step
that finished before with the same settings is skipped (a stamp in OUT/.stamps records them, and
a changed step redoes everything after it); `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from a2p.cli.common import reports_errors, setup_logging
from a2p.constants import CROP_MAX_FRAMES, FPS, SAMPLE_RATE
from a2p.errors import A2PError
from a2p.fileio import write_atomic

logger = logging.getLogger(__name__)

TASKS = ("face", "vq", "guide", "body")
"""Training order: the guide learns the tokens of the trained VQ."""

TRAIN_SETTINGS = (
    "train.batch_size=2",  # crops per rank: 600-frame attention dominates a CPU step
    "train.precision=fp32",  # bf16 autocast is slower than fp32 on most CPUs
    "train.ema.decay=0.99",  # the exported EMA weights follow a run of ~100 steps
    "train.log.interval=10",
)
EVAL_TASKS = ("face", "body")
"""Tasks that sample validation crops and log their metrics and a figure at the last step."""

SHARD_MB = 1.0
"""Shard size bound: below one window's size, so each window gets its own shard (train shards >= ranks)."""

SHORT_SECONDS = 8.0
LONG_SECONDS = CROP_MAX_FRAMES / FPS + 7.0
"""The long clip: one model window (20 s) and part of a second, so it is sampled as overlapping windows."""

CLIPS = ("short", "long")

SAMPLE_SETTINGS = ("--sampler", "dpmpp10", "--reps", "2")
"""A cheap sampler (10 DPM-Solver++ steps) and two repetitions per clip."""

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")


class StepFailed(A2PError):
    """A demo step exited with an error; the message names the step and its command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything it makes")
    parser.add_argument("--people", nargs="+", default=["PXB184"], help="people to synthesize")
    parser.add_argument(
        "--scenes",
        type=int,
        default=10,
        help="scenes per person: the last 6 are val and test, the rest train (one shard per rank)",
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="length of each scene (at least one 20 s model window)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel scene readers for the build")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of each training run")
    parser.add_argument("--nproc", type=int, default=2, help="processes per training and sampling run")
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    return parser


def run_command(step: str, module: str, argv: list[str], nproc: int = 1) -> None:
    """Run the CLI module `a2p.cli.NAME` as a user would: in this process, or under torchrun."""
    if nproc == 1:
        command = ["a2p", module.rsplit(".", 1)[-1], *argv]
        logger.info("%s: %s", step, shlex.join(command))
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code
    else:
        command = [*TORCHRUN, "--nproc_per_node", str(nproc), "-m", module, *argv]
        env = {"OMP_NUM_THREADS": "1", **os.environ}  # one thread per rank unless the user set it
        logger.info("%s: OMP_NUM_THREADS=%s %s", step, env["OMP_NUM_THREADS"], shlex.join(command))
        sys.stdout.flush()
        sys.stderr.flush()
        code = subprocess.run(command, env=env, check=False).returncode
    if code:
        raise StepFailed(f"demo step '{step}' failed (exit code {code}): {shlex.join(command)}")


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class Demo:
    """The demo's folders, and its steps with their stamps and timings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.raw, self.shards = args.out / "raw", args.out / "shards"
        self.runs, self.exports = args.out / "runs", args.out / "exports"
        self.clips, self.samples, self.evals = args.out / "clips", args.out / "samples", args.out / "eval"
        self.stamps = args.out / ".stamps"
        self.timings: list[tuple[str, float | None]] = []

    def step(
        self, name: str, settings: dict[str, Any], outputs: list[Path], work: Callable[[], None]
    ) -> None:
        """Run `work` unless it finished before with the same `settings` and its `outputs` exist.

        `settings` hold the step's commands and the settings of the steps it depends on, so a
        change anywhere upstream redoes it. Its outputs are removed before it runs again.
        """
        stamp = self.stamps / f"{name.replace(' ', '_').replace(':', '')}.json"
        if stamp.is_file() and json.loads(stamp.read_text()) == settings and all(p.exists() for p in outputs):
            logger.info("%s: done before with the same settings, skipped (--fresh redoes it)", name)
            self.timings.append((name, None))
            return
        stamp.unlink(missing_ok=True)
        for path in outputs:
            remove(path)
        started = time.perf_counter()
        work()
        self.timings.append((name, time.perf_counter() - started))
        stamp.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(stamp, lambda f: f.write(json.dumps(settings, indent=1).encode()))

    def command_step(
        self,
        name: str,
        module: str,
        argv: list[str],
        outputs: list[Path],
        after: Any,
        nproc: int | None = None,
    ) -> dict[str, Any]:
        """A step that is one command (on --nproc processes unless `nproc` is given); returns its settings."""
        nproc = self.args.nproc if nproc is None else nproc
        settings = {"after": after, "command": argv, "nproc": nproc}
        self.step(name, settings, outputs, lambda: run_command(name, module, argv, nproc))
        return settings

    def synthesize(self) -> dict[str, Any]:
        a = self.args
        argv = ["synth", "--out", str(self.raw), "--people", *a.people, "--scenes", str(a.scenes)]
        argv += ["--seconds", str(a.seconds), "--seed", str(a.seed)]
        return self.command_step("synthesize", "a2p.cli.data", argv, [self.raw], None, nproc=1)

    def build(self, person: str, upstream: dict[str, Any]) -> dict[str, Any]:
        shards = self.shards / person
        argv = ["build", "--src", str(self.raw / person), "--out", str(shards), "--features", "mel"]
        argv += ["--max-shard-mb", str(SHARD_MB), "--workers", str(self.args.workers)]
        settings = {"after": upstream, "command": argv}

        def work() -> None:
            run_command(f"{person}: build shards", "a2p.cli.data", argv)
            run_command(f"{person}: verify shards", "a2p.cli.data", ["verify", str(shards)])

        self.step(f"{person}: build and verify", settings, [shards], work)
        from a2p.data.format import load_manifest

        train_shards = len(load_manifest(shards).splits["train"].shards)
        if train_shards < self.args.nproc:
            raise StepFailed(
                f"{shards} has {train_shards} train shard(s), fewer than --nproc {self.args.nproc}: "
                "give more --scenes (all but the last 6 train)"
            )
        return settings

    def train(self, person: str, task: str, upstream: dict[str, Any]) -> dict[str, Any]:
        run_dir, export = self.runs / person / task, self.exports / person / f"{task}.safetensors"
        argv = [task, "--data", str(self.shards / person), "--run-dir", str(run_dir), "--preset", "debug"]
        argv += ["--max-steps", str(self.args.steps)]
        if task == "guide":
            argv += ["--vq", str(self.exports / person / "vq.safetensors")]
        overrides = [
            *TRAIN_SETTINGS,
            *([f"train.log.eval_interval={self.args.steps}"] if task in EVAL_TASKS else []),
        ]
        argv += [arg for item in overrides for arg in ("--set", item)]
        settings = {"after": upstream, "command": argv, "nproc": self.args.nproc}

        def work() -> None:
            export.parent.mkdir(parents=True, exist_ok=True)
            run_command(f"{person}: train {task}", "a2p.cli.train", argv, self.args.nproc)
            run_command(f"{person}: export {task}", "a2p.cli.export", [str(run_dir), "--out", str(export)])

        self.step(f"{person}: train {task}", settings, [run_dir, export], work)
        return settings

    def write_clips(self, person: str) -> None:
        """A short clip and one longer than a model window, from the test split's recordings."""
        import numpy as np
        import soundfile as sf

        from a2p.data.format import load_manifest

        scenes = load_manifest(self.shards / person).splits["test"].scenes
        audio = [
            sf.read(self.raw / person / f"{s}_audio.wav", dtype="int16", always_2d=True)[0] for s in scenes
        ]
        joined = np.concatenate(audio)  # (samples, 2) int16, repeated below when the split is short
        long_samples = int(LONG_SECONDS * SAMPLE_RATE)
        clips = {
            "short": audio[0][: int(SHORT_SECONDS * SAMPLE_RATE)],
            "long": np.tile(joined, (-(-long_samples // len(joined)), 1))[:long_samples],
        }
        (self.clips / person).mkdir(parents=True, exist_ok=True)
        for name, samples in clips.items():
            sf.write(self.clips / person / f"{name}.wav", samples, SAMPLE_RATE, subtype="PCM_16")

    def sample(self, person: str, models: dict[str, Any]) -> None:
        files = [
            arg for task in TASKS for arg in (f"--{task}", str(self.exports / person / f"{task}.safetensors"))
        ]
        clips_out, test_out = self.samples / person / "clips", self.samples / person / "test"
        clip_argv = [*files, "--out", str(clips_out), *SAMPLE_SETTINGS, "--plot", "--results-npy"]
        clip_argv += [str(self.clips / person / f"{name}.wav") for name in CLIPS]
        settings = {"after": models, "command": clip_argv, "nproc": self.args.nproc}

        def clips() -> None:
            self.write_clips(person)
            run_command(f"{person}: sample clips", "a2p.cli.sample", clip_argv, self.args.nproc)

        self.step(f"{person}: sample clips", settings, [self.clips / person, clips_out], clips)
        test_argv = [*files, "--out", str(test_out), *SAMPLE_SETTINGS, "--data", str(self.shards / person)]
        test_argv += ["--split", "test"]
        self.command_step(f"{person}: sample test split", "a2p.cli.sample", test_argv, [test_out], models)

    def evaluate(self, person: str) -> Path | None:
        """`a2p eval` of the test split's samples (cheap, so it always runs), if this a2p has it."""
        if importlib.util.find_spec("a2p.cli.eval") is None:
            logger.warning("%s: `a2p eval` is not in this version of a2p; the evaluation is skipped", person)
            return None
        report = self.evals / f"{person}_test.json"
        argv = ["--data", str(self.shards / person), "--results", str(self.samples / person / "test")]
        argv += ["--split", "test", "--out", str(report)]
        report.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        run_command(f"{person}: evaluate", "a2p.cli.eval", argv)
        self.timings.append((f"{person}: evaluate", time.perf_counter() - started))
        return report

    def run(self) -> dict[str, Path | None]:
        data = self.synthesize()
        reports = {}
        for person in self.args.people:
            shards = self.build(person, data)
            models: dict[str, Any] = {}
            for task in TASKS:
                upstream = {"data": shards, "vq": models["vq"]} if task == "guide" else shards
                models[task] = self.train(person, task, upstream)
            self.sample(person, models)
            reports[person] = self.evaluate(person)
        return reports

    def summary(self, reports: dict[str, Path | None], seconds: float) -> str:
        from a2p.data.format import load_manifest

        lines = [f"a2p demo made, in {seconds:.1f} s:", f"  recordings    {self.raw}/"]
        for person in self.args.people:
            shards, samples = self.shards / person, self.samples / person
            lines.append(f"  shards        {shards}/")
            for name, split in load_manifest(shards).splits.items():
                lines.append(
                    f"    {name:<5} {len(split.shards):3d} shards {split.samples:4d} windows "
                    f"{split.frames:7d} frames {split.hours * 60:6.2f} min  scenes {', '.join(split.scenes)}"
                )
            tasks, clips = "{" + ",".join(TASKS) + "}", "{" + ",".join(CLIPS) + "}"
            chunks = len(list((samples / "test").glob("*.npz")))
            lines += [
                f"  runs          {self.runs / person}/{tasks}/  (checkpoints, TensorBoard)",
                f"  exports       {self.exports / person}/{tasks}.safetensors",
                f"  clips         {self.clips / person}/{clips}.wav  ({SHORT_SECONDS:g} s; {LONG_SECONDS:g} s, "
                f"longer than one {CROP_MAX_FRAMES}-frame window)",
                f"  outputs       {samples / 'clips'}/{clips}.npz",
                f"  plots         {samples / 'clips'}/{clips}.png",
                f"  reference     {samples / 'clips' / 'reference'}/{clips}/{{face,body}}_results.npy",
                f"  test split    {samples / 'test'}/  ({chunks} chunks of {CROP_MAX_FRAMES} frames)",
                f"  eval          {reports[person] or 'skipped: this a2p has no `a2p eval`'}",
            ]
        lines += ["", "steps:"]
        lines += [
            f"  {name:<32} {'skipped' if took is None else f'{took:6.1f} s'}" for name, took in self.timings
        ]
        lines += ["", f"TensorBoard: tensorboard --logdir {self.runs}"]
        return "\n".join(lines)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.seconds * FPS < CROP_MAX_FRAMES:
        raise A2PError(
            f"--seconds must be at least {CROP_MAX_FRAMES / FPS:g} (one evaluation chunk), got {args.seconds}"
        )
    if args.steps < 1 or args.nproc < 1:
        raise A2PError(f"--steps and --nproc must be at least 1, got {args.steps} and {args.nproc}")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    started = time.perf_counter()
    demo = Demo(args)
    reports = demo.run()
    print("\n" + demo.summary(reports, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
