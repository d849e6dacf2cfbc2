"""Helpers of the trainer tests, and a script that trains the toy task in a child process.

    python tests/trainer_utils.py RUN_DIR [--resume latest] [--set section.key=value ...]
    torchrun --nproc_per_node 2 tests/trainer_utils.py RUN_DIR --set ...

With `DUMP_ENGINE_ENV`=DIR in the environment (DeepSpeed runs) it also writes the engine's full
fp32 weights, Adam moments and step counts to DIR/after_load.pt after a resume and to
DIR/saved_NNNNNN.pt after each save.

The script exits with the trainer's exit code (0 done, 75 preempted, 2 user error).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

TEST_DEFAULTS = (
    "train.precision=fp32",
    "train.log.progress_bar=false",
    "train.optimizer.lr=0.01",
    "train.ema.decay=0.9",
    "train.batch_size=4",
)
"""Settings every toy test run starts from (exact arithmetic, quiet, fast learning)."""
DUMP_ENGINE_ENV = "A2P_TEST_DUMP_ENGINE"
"""Environment variable naming the folder of `dump_engine_state` files (see the module doc)."""


def toy_config(*overrides: str) -> Any:
    """The toy task's run config with `TEST_DEFAULTS` and then `overrides` applied."""
    from a2p.training import load_run_config

    return load_run_config("toy", overrides=[*TEST_DEFAULTS, *overrides])


def read_scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    """Step -> value of one TensorBoard scalar tag of a run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {event.step: event.value for event in acc.Scalars(tag)}


def scalar_tags(run_dir: str | Path) -> set[str]:
    """All scalar tags a run wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def load_pt(checkpoint: str | Path, name: str) -> Any:
    """One file of a checkpoint directory."""
    return torch.load(Path(checkpoint) / name, map_location="cpu", weights_only=True)


def dump_engine_state(engine: Any, path: Path) -> None:
    """Write a DeepSpeed engine's full fp32 weights, Adam moments and optimizer step counts (every
    rank calls it: assembling ZeRO partitions is a collective; rank 0 writes)."""
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    params = {}
    for name, param in engine.module.named_parameters():
        params[name] = {"fp32": safe_get_full_fp32_param(param).cpu()}
        for key in ("exp_avg", "exp_avg_sq"):
            params[name][key] = safe_get_full_optimizer_state(param, key).cpu()
    steps = sorted({int(state["step"]) for state in engine.optimizer.optimizer.state.values()})
    if dist.get_rank() == 0:
        torch.save({"params": params, "steps": steps}, path)


def _dump_engine_states(directory: Path) -> None:
    """Make the trainer call `dump_engine_state` after loading a checkpoint and after each save."""
    from a2p.training.state import TrainState

    load, save = TrainState.load, TrainState.save

    def load_and_dump(self, path, **kwargs):
        load(self, path, **kwargs)
        dump_engine_state(self.backend.model, directory / "after_load.pt")

    def save_and_dump(self, run_dir, **kwargs):
        saved = save(self, run_dir, **kwargs)
        dump_engine_state(self.backend.model, directory / f"saved_{self.step:06d}.pt")
        return saved

    TrainState.load, TrainState.save = load_and_dump, save_and_dump


def start_training(cmd: list[str], env: dict[str, str] | None = None) -> tuple[Any, list[str], Any]:
    """Start a toy training command; returns (process, its stderr lines so far, the reading thread)
    once its log says training began (at most 60 s)."""
    import subprocess
    import threading

    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "training toy from step 0" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(60):
        proc.kill()
        raise AssertionError("training did not start:\n" + "".join(lines)[-3000:])
    return proc, lines, reader


def main(argv: list[str] | None = None) -> int:
    """Train the toy task in this process (one rank of a job, or the only one)."""
    torch.set_num_threads(1)
    from a2p import distributed
    from a2p.cli.common import reports_errors, setup_logging
    from a2p.training import train

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if os.environ.get(DUMP_ENGINE_ENV):
        dump_dir = Path(os.environ[DUMP_ENGINE_ENV])
        dump_dir.mkdir(parents=True, exist_ok=True)
        _dump_engine_states(dump_dir)
    setup_logging(rank=distributed.rank_info().rank)

    @reports_errors
    def run() -> int:
        return train("toy", toy_config(*args.overrides), args.run_dir, resume=args.resume).exit_code

    return run()


if __name__ == "__main__":
    sys.exit(main())
