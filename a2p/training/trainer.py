"""The one training loop, for every task in the registry.

The trainer owns the loop: process group, precision (bf16 autocast, TF32), gradient accumulation,
EMA per optimizer step, metrics, evaluation, checkpoints, exact resume and preemption. A task
(`a2p.training.tasks.Task`) owns its model, data stream, loss and evaluation; a backend
(`a2p.training.backends`: Accelerate/DDP or DeepSpeed ZeRO-1/2/3) owns wrapping, stepping and the
sharded part of checkpoints; `TrainState` is what a checkpoint holds.

Launch the same code under any launcher; on CPU-only machines use torchrun for several processes
(`torchrun --nproc_per_node 2 -m a2p.cli.train ...`): `accelerate launch --cpu --num_processes 2`
starts a single process. The task's data stream never passes through `accelerator.prepare`
(Accelerate would re-shard or dispatch it); tasks split their data by rank themselves.

Exactness: a run resumed from a checkpoint at step k reproduces the uninterrupted run bit for bit
on the same number of ranks (fp32 on CPU; GPU kernels may not be deterministic). A DeepSpeed run
resumed on another number of ranks keeps its fp32 weights and Adam moments through DeepSpeed's
universal checkpoint format (converted once per checkpoint), but not the per-rank random streams.
The learning-rate schedule spans `train.schedule.total_steps` (default `train.max_steps`), so changing
`max_steps` on resume changes the schedule unless `total_steps` is set.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from a2p import distributed
from a2p.config.core import from_dict, to_dict
from a2p.config.train import TrainConfig
from a2p.errors import A2PError, DataError
from a2p.training.backends import Backend, NonFiniteStep, build_backend
from a2p.training.backends.deepspeed import deepspeed_config
from a2p.training.evaluation import Evaluator
from a2p.training.logging import MetricsWriter
from a2p.training.metrics import TrainLog
from a2p.training.optim import build_optimizer, build_scheduler
from a2p.training.rng import seed_rank
from a2p.training.run_dir import TENSORBOARD_DIR, check_run_dir, write_run_files
from a2p.training.signals import EXIT_PREEMPTED, PreemptionHandler
from a2p.training.state import TrainState
from a2p.training.tasks import ResumableIterable, Task, TaskContext, build_task, run_config_class
from a2p.training.watchdog import StepWatchdog

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a call to `train` ended."""

    step: int
    """Optimizer steps completed."""
    preempted: bool
    """True when a signal stopped the run before `max_steps` (a checkpoint was saved)."""
    checkpoint: Path | None
    """The newest checkpoint written, if any."""

    @property
    def exit_code(self) -> int:
        """0 when finished, `EXIT_PREEMPTED` (75) when stopped by a signal: requeue the job."""
        return EXIT_PREEMPTED if self.preempted else 0


def _sample_names(batch: Any) -> str:
    """The samples of a batch as messages name them: shard and key of each row (when it has them)."""
    if not isinstance(batch, dict) or "key" not in batch:
        return "no named samples"
    shards = batch.get("shard") or [""] * len(batch["key"])
    return ", ".join(
        f"{key} ({shard})" if shard else str(key) for key, shard in zip(batch["key"], shards) if key
    )


def finite_values(out: dict[str, torch.Tensor], grad_norm: Any) -> bool:
    """Whether a micro-step's loss (and its gradient norm, if any) are finite: only those are logged."""
    values = [out["loss"].detach()] + ([torch.as_tensor(grad_norm)] if grad_norm is not None else [])
    return all(bool(torch.isfinite(v).all()) for v in values)


class Trainer:
    """Trains task `task_name` with a resolved run config (`train` + `task` sections) in `run_dir`."""

    def __init__(self, task_name: str, config: Any, run_dir: str | Path, resume: str | None = None) -> None:
        if isinstance(config, dict):
            config = from_dict(run_config_class(task_name), config)
        self.task_name = task_name
        self.config = config
        self.cfg: TrainConfig = config.train
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.resolved = to_dict(config)

    def run(self) -> TrainResult:
        """Train to `train.max_steps` or until a preemption signal; returns how it ended."""
        cfg = self.cfg
        # Everything a user can get wrong is checked before any process group or model exists.
        task: Task = build_task(self.task_name, self.config.task)
        resume_from = check_run_dir(self.run_dir, self.task_name, self.resume)
        world_size = distributed.rank_info().world_size
        cfg.rank_batch_size(world_size)  # a global batch the ranks cannot share is refused now
        ds_config = deepspeed_config(cfg, world_size) if cfg.backend == "deepspeed" else None

        opened_group = not distributed.is_initialized()
        distributed.init_process_group(single=ds_config is not None, timeout_s=cfg.dist_timeout_s)
        if distributed.rank_info().is_main:
            write_run_files(self.run_dir, self.task_name, self.resolved)
        distributed.barrier()
        backend = build_backend(cfg, ds_config, task.find_unused_parameters)
        try:
            with PreemptionHandler() as preemption:
                result = self.train_loop(task, backend, preemption, resume_from)
        except BaseException:
            # A failing rank must not wait for the others (they may sit in a collective it will
            # never join): it leaves at once, and the launcher (torchrun, srun) stops the rest.
            # Alone, it leaves the process group it opened, so a later run in this process starts clean.
            backend.close()
            if opened_group and distributed.rank_info().world_size == 1:
                distributed.destroy_process_group()
            raise
        distributed.barrier()
        backend.close()
        if opened_group:
            distributed.destroy_process_group()
        return result

    def build_state(
        self, task: Task, backend: Backend, resume_from: Path | None
    ) -> tuple[TrainState, TaskContext]:
        """Model, optimizer, schedule, EMA and data of this rank, restored from `resume_from` if given.

        The order is part of the exact-resume contract: the same initial weights on every rank,
        then each rank's own random streams, then the checkpoint (random streams last).
        """
        cfg, info, device = self.cfg, distributed.rank_info(), backend.device
        if cfg.tf32 and device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        model = task.build_model().to(device)
        optimizer = build_optimizer(model, cfg, device)
        scheduler = build_scheduler(optimizer, cfg)
        backend.prepare(model, optimizer, resume_from)
        ema = backend.build_ema()
        ctx = TaskContext(
            rank=info.rank,
            world_size=info.world_size,
            device=device,
            seed=cfg.seed,
            batch_size=cfg.rank_batch_size(info.world_size),
            data=cfg.data,
            run_dir=self.run_dir,
            units=cfg.units,
            all_reduce_mean=distributed.all_reduce_mean,
        )
        data = task.build_data(ctx)
        if not isinstance(data, ResumableIterable):
            raise TypeError(f"task {task.name!r}: build_data must return a ResumableIterable")
        state = TrainState(step=0, backend=backend, scheduler=scheduler, ema=ema, data=data)
        seed_rank(cfg.seed, info.rank)
        if resume_from is not None:
            state.load(resume_from, config=self.resolved, seed=cfg.seed)
        return state, ctx

    def train_loop(
        self, task: Task, backend: Backend, preemption: PreemptionHandler, resume_from: Path | None
    ) -> TrainResult:
        cfg = self.cfg
        state, ctx = self.build_state(task, backend, resume_from)
        log = self._open_log(state.step, backend.device)
        evaluate = Evaluator(task, cfg, ctx, log.writer)
        batches = _BatchSource(state.data)
        autocast = (
            torch.autocast(device_type=backend.device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16"
            else contextlib.nullcontext()
        )

        def loss(batch: Any) -> dict[str, torch.Tensor]:
            with autocast:
                return task.loss(backend.model, batch)

        last_saved, preempted, skips = None, False, 0

        def finite(out: dict[str, torch.Tensor]) -> bool:
            """The micro-batch's loss is finite on every rank (one all-reduce of one flag)."""
            bad = not bool(torch.isfinite(out["loss"].detach()).all())
            return not distributed.any_rank(bad, backend.device)

        watchdog = StepWatchdog(distributed.rank_info().rank, cfg.watchdog_s).__enter__()
        watchdog.beat(state.step)
        try:
            backend.model.train()
            while state.step < cfg.max_steps:
                lr = state.lr
                for _ in range(cfg.grad_accum):
                    t0 = time.perf_counter()
                    batch = batches.next()
                    counts = {"samples": float(ctx.batch_size), **task.counts(batch)}
                    samples = _sample_names(batch)
                    batch = _to_device(batch, backend.device)
                    wait = time.perf_counter() - t0
                    try:
                        out, grad_norm, skipped = backend.micro_step(lambda batch=batch: loss(batch), finite)
                    except NonFiniteStep as err:
                        raise A2PError(f"step {state.step + 1}: {err}; the batch held {samples}") from err
                    if finite_values(out, grad_norm):
                        log.micro_step(out, grad_norm, counts, wait)
                    if skipped:
                        skips += 1
                        logger.warning(
                            "step %d skipped (%d of at most %d): non-finite loss or gradient (loss %s, "
                            "gradient norm %s); the weights did not change; the batch held %s",
                            state.step + 1, skips, cfg.max_skipped_steps, float(out["loss"]), grad_norm, samples,
                        )  # fmt: skip
                        if skips > cfg.max_skipped_steps:
                            raise A2PError(
                                f"step {state.step + 1}: {skips} steps had a non-finite loss or gradient "
                                f"(train.max_skipped_steps={cfg.max_skipped_steps}); stopping without "
                                f"saving; the last batch held {samples}"
                            )
                if not backend.at_boundary():
                    raise RuntimeError("gradient accumulation lost its boundary; the optimizer did not step")
                state.finish_step()
                watchdog.beat(state.step)
                log.optimizer_step()
                step, last = state.step, state.step == cfg.max_steps

                if step % cfg.log.interval == 0 or last:
                    log.write(step, lr)
                if evaluate.due(step):
                    evaluate(backend.module, state.ema, step)
                if step % cfg.preempt_check_interval == 0 or last:
                    preempted = distributed.any_rank(preemption.requested, backend.device) and not last
                if step % cfg.checkpoint.interval == 0 or last or preempted:
                    reason = "preempted" if preempted else ("final" if last else "interval")
                    last_saved = state.save(
                        self.run_dir, task=self.task_name, config=self.resolved, reason=reason,
                        keep=cfg.checkpoint.keep,
                    )  # fmt: skip
                if preempted:
                    name = preemption.received.name if preemption.received else "a signal on another rank"
                    logger.warning("stopping at step %d after %s; saved %s", step, name, last_saved)
                    break
        finally:
            watchdog.__exit__()
            log.close()
        return TrainResult(step=state.step, preempted=preempted, checkpoint=last_saved)

    def _open_log(self, step: int, device: torch.device) -> TrainLog:
        from tqdm.auto import tqdm

        cfg, info = self.cfg, distributed.rank_info()
        writer = MetricsWriter(
            self.run_dir / TENSORBOARD_DIR,
            enabled=info.is_main and cfg.log.tensorboard,
            purge_step=step + 1 if step else None,
        )
        bar = tqdm(
            total=cfg.max_steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            disable=not (info.is_main and cfg.log.progress_bar),
        )
        logger.info(
            "training %s from step %d to %d on %d rank(s) (%s, %s, global batch %d) in %s",
            self.task_name,
            step,
            cfg.max_steps,
            info.world_size,
            cfg.backend,
            cfg.precision,
            cfg.rank_batch_size(info.world_size) * cfg.grad_accum * info.world_size,
            self.run_dir,
        )
        return TrainLog(writer, bar, device)


class _BatchSource:
    """Endless `next()` over a task stream; a stream that ends is restarted as a new epoch."""

    def __init__(self, data: ResumableIterable) -> None:
        self.data = data
        self.iterator: Iterator[Any] = iter(data)

    def next(self) -> Any:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.data)
            try:
                return next(self.iterator)
            except StopIteration:
                raise DataError("the task's training stream yields no batches") from None


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def train(task: str, config: Any, run_dir: str | Path, resume: str | None = None) -> TrainResult:
    """Train `task` with the resolved run `config` in `run_dir` (see `Trainer`)."""
    return Trainer(task, config, run_dir, resume).run()
