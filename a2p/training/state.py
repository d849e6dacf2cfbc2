"""`TrainState`: everything a checkpoint saves and a resume restores, as one object.

The step, the model and optimizer (through the backend, which knows how its state is sharded),
the LR scheduler, the EMA, this rank's data position and random streams. `save` writes one
atomic checkpoint (`a2p.training.checkpoint`) from every rank; `load` restores all of it, the
random streams last, so a resumed run continues bit for bit on the same number of ranks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from a2p import distributed
from a2p.errors import A2PError
from a2p.training.backends import Backend
from a2p.training.checkpoint import EMA_FILE, SCHEDULER_FILE, load_file, rank_file_name, save_checkpoint
from a2p.training.ema import EMA
from a2p.training.rng import capture_rng, restore_rng, seed_rank
from a2p.training.run_dir import CONFIG_FILE, checkpoint_root, read_meta
from a2p.training.tasks import ResumableIterable
from a2p.version import __version__

logger = logging.getLogger(__name__)

RESUME_IGNORED = {"train.max_steps"}
"""Config keys a resume may change without a warning (a run is continued to a later step)."""


@dataclass
class TrainState:
    """A run's state on this rank, at optimizer step `step`."""

    step: int
    backend: Backend
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    data: ResumableIterable

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer step."""
        return self.scheduler.get_last_lr()[0]

    def finish_step(self) -> None:
        """After an optimizer step: advance the schedule and the step count, fold in the EMA."""
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.backend.module, self.step)

    def save(self, run_dir: Path, *, task: str, config: dict[str, Any], reason: str, keep: int) -> Path:
        """Write checkpoint `step` of `run_dir` (every rank calls this) and return its directory.

        Weights that are not finite are never saved (so keep-last-K never prunes a good
        checkpoint for a broken one): every rank checks its own, and all refuse together.
        """
        broken = [
            name for name, p in self.backend.module.named_parameters() if not bool(torch.isfinite(p).all())
        ]
        if distributed.any_rank(bool(broken), self.backend.device):
            shown = ", ".join(broken[:3]) or "on another rank"
            raise A2PError(
                f"step {self.step}: the weights hold non-finite values ({shown}); not saving a "
                f"checkpoint, the earlier ones in {checkpoint_root(run_dir)} are kept"
            )
        shared, every_rank = self.backend.checkpoint_files()  # collective under ZeRO-3
        shared[SCHEDULER_FILE] = self.scheduler.state_dict()
        if self.ema is not None:
            shared[EMA_FILE] = self.ema.state_dict()
        meta = {
            "task": task,
            "backend": self.backend.name,
            "precision": self.backend.config.precision,
            "reason": reason,
            "a2p_version": __version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = save_checkpoint(
            checkpoint_root(run_dir),
            self.step,
            shared=shared,
            rank_state={"rng": capture_rng(), "data": self.data.state_dict()},
            meta=meta,
            config=config,
            keep=keep,
            every_rank=every_rank,
        )
        logger.info("saved %s", path)
        return path

    def load(self, path: Path, *, config: dict[str, Any], seed: int) -> None:
        """Restore everything from checkpoint `path` (every rank calls this).

        On another number of ranks the weights, optimizer and schedule carry over; data positions
        carry over when the stream can re-cut them (`load_resharded_state`), and the per-rank
        random streams are reseeded from (seed, rank, step), with a warning.
        """
        info = distributed.rank_info()
        meta = read_meta(path)
        backend = meta.get("backend", "ddp")
        if backend != self.backend.name:
            raise A2PError(f"{path} was written by backend {backend!r}, this run uses {self.backend.name!r}")
        self.step = int(meta["step"])
        if info.is_main:
            _warn_config_changes(path, json.loads((path / CONFIG_FILE).read_text()), config)
        self.backend.load(path)
        self.scheduler.load_state_dict(load_file(path, SCHEDULER_FILE))
        if self.ema is not None:
            if (path / EMA_FILE).is_file():
                self.ema.load_state_dict(load_file(path, EMA_FILE))
            else:
                logger.warning("%s has no EMA; the average restarts from the current weights", path)
                self.ema.update(self.backend.module, 0)  # step 0 <= start_step: a plain copy of the weights
                self.ema.num_updates = 0
        saved_world = int(meta["world_size"])
        if saved_world == info.world_size:
            state = load_file(path, rank_file_name(info.rank))
            self.data.load_state_dict(state["data"])
            restore_rng(state["rng"])  # last: nothing after this may draw random numbers
        else:
            self._load_resharded(path, saved_world, seed)
        logger.info("resumed from %s at step %d", path, self.step)

    def _load_resharded(self, path: Path, saved_world: int, seed: int) -> None:
        info = distributed.rank_info()
        states = [load_file(path, rank_file_name(r))["data"] for r in range(saved_world)]
        reshard = getattr(self.data, "load_resharded_state", None)
        kept = "data positions carried over by the loader" if reshard else "data loaders restart"
        if info.is_main:
            logger.warning(
                "%s was saved by %d rank(s), this run has %d: per-rank random streams cannot be kept "
                "(reseeded from the seed and step), %s; the run continues but will not match an "
                "uninterrupted one",
                path,
                saved_world,
                info.world_size,
                kept,
            )
        if reshard is not None:
            reshard(states)
        seed_rank(seed, info.rank, self.step)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _warn_config_changes(path: Path, saved: dict[str, Any], resolved: dict[str, Any]) -> None:
    old, new = _flatten(saved), _flatten(resolved)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUME_IGNORED)
    if changed:
        logger.warning(
            "resuming %s with a changed config: %s",
            path,
            ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed),
        )
