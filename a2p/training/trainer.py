"""The one training loop, on HF Accelerate, for every task in the registry.

The trainer owns the loop: process group, precision (bf16 autocast, TF32), AdamW, LR schedule,
gradient accumulation and clipping, EMA per optimizer step, metrics, checkpoints, exact resume and
preemption. A task (`a2p.training.tasks.Task`) owns its model, data stream, loss and evaluation.

Backends: `ddp` goes through `accelerator.prepare` (DistributedDataParallel, or nothing on one
process); `deepspeed` builds a DeepSpeed engine (ZeRO-1/2/3) directly from the JSON config,
because Accelerate 1.15's DeepSpeed plugin cannot be used without `transformers` installed. Both
differ only in `_AccelerateStepper` / `_DeepSpeedStepper` and in how checkpoints store optimizer
state. Under ZeRO-3 the module's parameters are partitioned over the ranks: the EMA then averages
each rank's partition (`_PartitionedEMA`), and checkpoints, exports and evaluation read gathered
full weights.

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
import dataclasses
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from a2p import distributed
from a2p.config.core import to_dict
from a2p.config.train import TrainConfig
from a2p.errors import A2PError, ConfigError, DataError
from a2p.fileio import read_json
from a2p.training import checkpoint as ckpt
from a2p.training.ema import EMA
from a2p.training.logging import MetricsWriter, StepTimer, peak_memory_mb
from a2p.training.signals import EXIT_PREEMPTED, PreemptionHandler
from a2p.training.tasks import ResumableIterable, Task, TaskContext, build_task, run_config_class
from a2p.version import __version__

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""File of a run directory naming its task."""
CONFIG_FILE = "config.json"
"""Resolved config of a run directory, written before step 0."""
TENSORBOARD_DIR = "tensorboard"
"""Folder of the TensorBoard event files."""


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


# --- run directory ------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, task: str, resume: str | None) -> Path | None:
    """Refuse a run directory that holds another task's run; return the checkpoint to resume.

    Called on every rank before any model is built. A fresh start (`resume` None) in a directory
    that already has checkpoints is refused, so a run is never silently mixed with another.
    """
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        try:
            recorded = json.loads(run_file.read_text()).get("task")
        except json.JSONDecodeError as err:
            raise A2PError(f"{run_file}: not valid JSON ({err})") from err
        if recorded != task:
            raise A2PError(
                f"{run_dir} holds a {recorded!r} run; it cannot continue as task {task!r} "
                "(choose another --run-dir)"
            )
    checkpoint = ckpt.resolve_resume(run_dir, resume)
    if resume is None:
        existing = ckpt.list_checkpoints(ckpt.checkpoint_root(run_dir))
        if existing:
            raise A2PError(
                f"{run_dir} already has checkpoints up to step {existing[-1][0]}; "
                "pass --resume latest to continue it or choose a new --run-dir"
            )
    if checkpoint is not None:
        meta = ckpt.read_meta(checkpoint)
        if meta.get("task") != task:
            raise A2PError(f"checkpoint {checkpoint} is of task {meta.get('task')!r}, not {task!r}")
    return checkpoint


def _write_run_files(run_dir: Path, task: str, config: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        ckpt._write_text(run_file, json.dumps({"task": task, "a2p_version": __version__}, indent=2) + "\n")
    ckpt._write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- pieces -------------------------------------------------------------------------------------


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based): linear warm-up, then the decay."""
    sched = config.schedule
    if sched.warmup_steps and step < sched.warmup_steps:
        return (step + 1) / sched.warmup_steps
    if sched.kind == "constant":
        return 1.0
    span = max(config.schedule_steps - sched.warmup_steps, 1)
    progress = min(max(step - sched.warmup_steps, 0) / span, 1.0)
    return sched.min_lr_ratio + (1.0 - sched.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel on CUDA when `fused` is auto or on."""
    opt = config.optimizer
    fused = opt.fused == "on" or (opt.fused == "auto" and device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay, fused=fused or None
    )


def _seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Seed python, numpy and torch from (seed, rank, step); each rank gets its own streams."""
    derived = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def deepspeed_config(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON of `train.deepspeed_config`, checked against and completed from the trainer.

    Batch sizes, accumulation, clipping and precision come from the trainer config ("auto" or
    absent values are filled in; contradicting ones are errors). The trainer owns optimizer and
    schedule, so the JSON must not define them.
    """
    path = Path(config.deepspeed_config)
    ds = read_json(path, "train.deepspeed_config", ConfigError)
    for owned in ("optimizer", "scheduler"):
        if owned in ds:
            raise ConfigError(f"{path}: remove '{owned}'; the trainer builds it from train.{owned}")
    expected = {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.batch_size * config.grad_accum * world_size,
        "gradient_clipping": config.grad_clip,
    }
    for key, value in expected.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise ConfigError(f"{path}: {key} is {ds[key]}, but the trainer config implies {value}")
        ds[key] = value
    bf16 = config.precision == "bf16"
    for section, enabled in (("bf16", bf16), ("fp16", False)):
        value = ds.get(section, {}).get("enabled", "auto")
        if value not in ("auto", enabled):
            raise ConfigError(
                f"{path}: {section}.enabled is {value}, but train.precision is {config.precision}"
            )
        ds.setdefault(section, {})["enabled"] = enabled
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("elastic_checkpoint"):
        raise ConfigError(f"{path}: elastic_checkpoint does not resume exactly; remove it")
    return ds


class _AccelerateStepper:
    """Micro-steps through Accelerate (DDP or one process): accumulation, clipping, optimizer step."""

    def __init__(self, accelerator: Any, model: nn.Module, optimizer: Any, clip: float) -> None:
        self.accelerator, self.model, self.optimizer, self.clip = accelerator, model, optimizer, clip

    def micro_step(
        self, loss_fn: Callable[[], dict[str, torch.Tensor]]
    ) -> tuple[dict[str, torch.Tensor], Any]:
        """Forward/backward one micro-batch; at the accumulation boundary clip and step.

        Returns the loss dict and the pre-clip gradient norm (None between boundaries).
        """
        accelerator, norm = self.accelerator, None
        with accelerator.accumulate(self.model):
            out = loss_fn()
            accelerator.backward(out["loss"])  # divides by grad_accum
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(self.model.parameters(), self.clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return out, norm

    def at_boundary(self) -> bool:
        """Whether the last micro-step ended an optimizer step."""
        return bool(self.accelerator.sync_gradients)


class _DeepSpeedStepper:
    """Micro-steps through a DeepSpeed engine, which accumulates, clips and steps by its config."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._stepped = False

    def micro_step(
        self, loss_fn: Callable[[], dict[str, torch.Tensor]]
    ) -> tuple[dict[str, torch.Tensor], Any]:
        """Forward/backward one micro-batch; the engine steps at its own accumulation boundary."""
        out = loss_fn()
        self.engine.backward(out["loss"])  # scales by 1 / gradient_accumulation_steps itself
        before = self.engine.global_steps
        self.engine.step()
        self._stepped = self.engine.global_steps != before
        return out, self.engine.get_global_grad_norm() if self._stepped else None

    def at_boundary(self) -> bool:
        """Whether the last micro-step ended an optimizer step."""
        return self._stepped


class _Window:
    """Loss terms and grad norms summed on the device between two log steps."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.per_sample: dict[str, list[torch.Tensor]] = {}
        self.micro_steps = 0
        self.grad_norm: torch.Tensor | None = None
        self.optimizer_steps = 0

    def add(self, out: dict[str, torch.Tensor]) -> None:
        for name, value in out.items():
            value = value.detach().float()
            if value.dim() > 0:
                self.per_sample.setdefault(name, []).append(value.flatten())
                value = value.mean()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.micro_steps += 1

    def add_grad_norm(self, norm: Any, device: torch.device) -> None:
        if norm is None:
            return
        norm = torch.as_tensor(norm, device=device, dtype=torch.float32).detach()
        self.grad_norm = norm if self.grad_norm is None else self.grad_norm + norm
        self.optimizer_steps += 1

    def reduce(self) -> dict[str, float]:
        """Means over the window and over ranks (every rank must call this at the same step)."""
        names = sorted(self.sums)
        values = [self.sums[n] / max(self.micro_steps, 1) for n in names]
        if self.grad_norm is not None:
            names.append("grad_norm")
            values.append(self.grad_norm / max(self.optimizer_steps, 1))
        if not values:
            return {}
        stacked = distributed.all_reduce_mean(torch.stack(values))
        return dict(zip(names, stacked.tolist()))


# --- the trainer --------------------------------------------------------------------------------


class Trainer:
    """Trains task `task_name` with a resolved run config (`train` + `task` sections) in `run_dir`."""

    def __init__(self, task_name: str, config: Any, run_dir: str | Path, resume: str | None = None) -> None:
        if isinstance(config, dict):
            from a2p.config.core import from_dict

            config = from_dict(run_config_class(task_name), config)
        self.task_name = task_name
        self.config = config
        self.cfg: TrainConfig = config.train
        self.run_dir = Path(run_dir)
        self.resume = resume

    def run(self) -> TrainResult:
        """Train to `train.max_steps` or until a preemption signal; returns how it ended."""
        cfg = self.cfg
        resolved = to_dict(self.config)
        # Everything a user can get wrong is checked before any process group or model exists.
        task: Task = build_task(self.task_name, self.config.task)
        resume_from = check_run_dir(self.run_dir, self.task_name, self.resume)
        world_size = distributed.rank_info().world_size
        ds_config = deepspeed_config(cfg, world_size) if cfg.backend == "deepspeed" else None

        opened_group = not distributed.is_initialized()
        distributed.init_process_group(single=ds_config is not None)
        info = distributed.rank_info()
        if info.is_main:
            _write_run_files(self.run_dir, self.task_name, resolved)
        distributed.barrier()

        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # DeepSpeed is driven directly (deepspeed.initialize): Accelerate 1.15's DeepSpeed plugin
        # needs `transformers` installed, and on CPU it only works with an explicit gloo group.
        # Accelerate then only picks the device; the engine does the data-parallel work.
        ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=task.find_unused_parameters)
        kwargs: dict[str, Any] = {
            "cpu": not torch.accelerator.is_available(),
            "mixed_precision": "bf16" if cfg.precision == "bf16" else "no",
            "gradient_accumulation_steps": cfg.grad_accum,
            "kwargs_handlers": [ddp_kwargs],
        }
        accelerator = Accelerator(**kwargs)
        try:
            with PreemptionHandler() as preemption:
                return self._train(task, accelerator, preemption, resume_from, resolved, ds_config)
        finally:
            distributed.barrier()
            _release_accelerate_state()
            if opened_group:
                distributed.destroy_process_group()

    # One long method on purpose: the order of its steps is the contract for exact resume.
    def _train(
        self,
        task: Task,
        accelerator: Any,
        preemption: PreemptionHandler,
        resume_from: Path | None,
        resolved: dict[str, Any],
        ds_config: dict[str, Any] | None,
    ) -> TrainResult:
        cfg = self.cfg
        info = distributed.rank_info()
        device = accelerator.device
        deepspeed = ds_config is not None
        if cfg.tf32 and device.type == "cuda":
            torch.set_float32_matmul_precision("high")

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        raw_model = task.build_model().to(device)
        optimizer = build_optimizer(raw_model, cfg, device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
        # The scheduler stays out of `prepare`: Accelerate would step it once per process. It sets
        # the LR on the torch optimizer's param groups, which DeepSpeed's ZeRO optimizer steps.
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        stepper: _AccelerateStepper | _DeepSpeedStepper
        ds_load: str | None = None  # which engine checkpoint `_load` restores (None: not DeepSpeed)
        if ds_config is not None:
            import deepspeed as deepspeed_lib

            ds_load = ckpt.ENGINE_TAG
            if resume_from is not None and _saved_world_size(resume_from) != info.world_size:
                ds_load = _prepare_rescaled_resume(resume_from, raw_model)
                if ds_load == ckpt.UNIVERSAL_TAG:
                    ds_config = {
                        **ds_config,
                        "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True},
                    }
            model, optimizer, _, _ = deepspeed_lib.initialize(
                model=raw_model, optimizer=optimizer, config=ds_config
            )
            unwrapped = model.module
            stepper = _DeepSpeedStepper(model)
        else:
            model, optimizer = accelerator.prepare(raw_model, optimizer)
            unwrapped = accelerator.unwrap_model(model)
            stepper = _AccelerateStepper(accelerator, model, optimizer, clip)
        ema_class = _PartitionedEMA if _is_partitioned(unwrapped) else EMA
        ema = ema_class(unwrapped, cfg.ema.decay, cfg.ema.start_step) if cfg.ema.enabled else None
        ctx = TaskContext(
            rank=info.rank,
            world_size=info.world_size,
            device=device,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            data=cfg.data,
            run_dir=self.run_dir,
            all_reduce_mean=distributed.all_reduce_mean,
        )
        data = task.build_data(ctx)
        if not isinstance(data, ResumableIterable):
            raise TypeError(f"task {task.name!r}: build_data must return a ResumableIterable")

        step = 0
        _seed_rank(cfg.seed, info.rank)
        if resume_from is not None:
            step = self._load(
                resume_from, model, unwrapped, optimizer, scheduler, ema, data, resolved, ds_load
            )

        writer = MetricsWriter(
            self.run_dir / TENSORBOARD_DIR,
            enabled=info.is_main and cfg.log.tensorboard,
            purge_step=step + 1 if step else None,
        )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.max_steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            disable=not (info.is_main and cfg.log.progress_bar),
        )
        global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
        logger.info(
            "training %s from step %d to %d on %d rank(s) (%s, %s, global batch %d) in %s",
            task.name,
            step,
            cfg.max_steps,
            info.world_size,
            cfg.backend,
            cfg.precision,
            global_batch,
            self.run_dir,
        )
        batches = _BatchSource(data)
        timer = StepTimer()
        window = _Window()
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16"
            else contextlib.nullcontext()
        )
        last_saved: Path | None = None
        preempted = False
        try:
            model.train()
            while step < cfg.max_steps:
                lr = scheduler.get_last_lr()[0]
                for _ in range(cfg.grad_accum):
                    t0 = time.perf_counter()
                    batch = batches.next()
                    counts = {"samples": float(cfg.batch_size), **task.counts(batch)}
                    batch = _to_device(batch, device)
                    timer.add_wait(time.perf_counter() - t0)
                    timer.add_counts(counts)
                    out, norm = stepper.micro_step(functools.partial(_loss, task, model, batch, autocast))
                    window.add_grad_norm(norm, device)
                    window.add(out)
                if not stepper.at_boundary():
                    raise RuntimeError("gradient accumulation lost its boundary; the optimizer did not step")
                scheduler.step()
                step += 1
                if ema is not None:
                    ema.update(unwrapped, step)
                timer.steps += 1
                bar.update(1)

                if step % cfg.log.interval == 0 or step == cfg.max_steps:
                    self._log(writer, window, timer, lr, step, device, bar)
                    window, timer = _Window(), StepTimer()
                if cfg.log.eval_interval and (step % cfg.log.eval_interval == 0 or step == cfg.max_steps):
                    self._evaluate(task, ctx, unwrapped, ema, writer, step)
                if step % cfg.preempt_check_interval == 0 or step == cfg.max_steps:
                    preempted = distributed.any_rank(preemption.requested, device) and step < cfg.max_steps
                if step % cfg.checkpoint.interval == 0 or step == cfg.max_steps or preempted:
                    last_saved = self._save(
                        step,
                        model,
                        unwrapped,
                        optimizer,
                        scheduler,
                        ema,
                        data,
                        resolved,
                        deepspeed,
                        preempted,
                    )
                if preempted:
                    name = preemption.received.name if preemption.received else "a signal on another rank"
                    logger.warning("stopping at step %d after %s; saved %s", step, name, last_saved)
                    break
        finally:
            bar.close()
            writer.close()
        return TrainResult(step=step, preempted=preempted, checkpoint=last_saved)

    def _log(
        self,
        writer: MetricsWriter,
        window: _Window,
        timer: StepTimer,
        lr: float,
        step: int,
        device: torch.device,
        bar: Any,
    ) -> None:
        values = window.reduce()  # the only host sync of the window
        if not bar.disable:
            bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4g}", refresh=False)
        if not writer.enabled:
            return
        scalars = {f"train/{name}": value for name, value in values.items()}
        scalars["train/lr"] = lr
        scalars.update(timer.summary())
        scalars["perf/peak_mem_mb"] = peak_memory_mb(device)
        writer.scalars(scalars, step)
        for name, chunks in window.per_sample.items():
            writer.histogram(f"train/{name}", torch.cat(chunks), step)
        writer.flush()

    def _evaluate(
        self,
        task: Task,
        ctx: TaskContext,
        unwrapped: nn.Module,
        ema: EMA | None,
        writer: MetricsWriter,
        step: int,
    ) -> None:
        rng = ckpt.capture_rng()  # evaluation must not shift the training streams
        if _is_partitioned(unwrapped):
            # ZeRO-3: a full copy of the model on every rank, built for this evaluation and dropped
            # after it, so each rank samples its own share without the engine's collectives.
            model = task.build_model().to(ctx.device)
            if ema is not None:
                ema.copy_to(model)
            else:
                _copy_gathered(unwrapped, model)
        elif ema is not None:
            if not hasattr(self, "_eval_model"):
                self._eval_model = ema.averaged_copy(unwrapped)
            ema.copy_to(self._eval_model)
            model = self._eval_model
        else:
            model = unwrapped
        was_training = model.training
        model.eval()
        # evaluate in the training precision: a DeepSpeed bf16 module holds bf16 weights
        bf16 = self.cfg.precision == "bf16" or any(p.dtype == torch.bfloat16 for p in model.parameters())
        autocast = torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=bf16)
        try:
            with torch.no_grad(), autocast:
                results = task.evaluate(model, dataclasses.replace(ctx, step=step))
        finally:
            model.train(was_training)
            ckpt.restore_rng(rng)
        for name, value in results.items():
            writer.value(f"eval/{name}", value, step)
        if results:
            logger.info("step %d eval: %s", step, {k: v for k, v in results.items() if isinstance(v, float)})

    def _save(
        self,
        step: int,
        model: Any,
        unwrapped: nn.Module,
        optimizer: Any,
        scheduler: Any,
        ema: EMA | None,
        data: ResumableIterable,
        resolved: dict[str, Any],
        deepspeed: bool,
        preempted: bool,
    ) -> Path:
        # Under DeepSpeed the engine saves optimizer and master weights, a shard per rank, and
        # every rank must take part; model.pt is then the module's (possibly bf16) weights,
        # gathered under ZeRO-3 (as is the EMA), so exports never need the engine.
        shared: dict[str, Any] = {
            "model.pt": _full_state_dict(unwrapped),
            "scheduler.pt": scheduler.state_dict(),
        }
        every_rank: Callable[[Path], None] | None = None
        if deepspeed:
            every_rank = functools.partial(_save_deepspeed, model)
        else:
            shared["optimizer.pt"] = optimizer.state_dict()
        if ema is not None:
            shared["ema.pt"] = ema.state_dict()
        meta = {
            "task": self.task_name,
            "backend": self.cfg.backend,
            "precision": self.cfg.precision,
            "reason": "preempted" if preempted else ("final" if step == self.cfg.max_steps else "interval"),
            "a2p_version": __version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = ckpt.save_checkpoint(
            ckpt.checkpoint_root(self.run_dir),
            step,
            shared=shared,
            rank_state={"rng": ckpt.capture_rng(), "data": data.state_dict()},
            meta=meta,
            config=resolved,
            keep=self.cfg.checkpoint.keep,
            every_rank=every_rank,
        )
        logger.info("saved %s", path)
        return path

    def _load(
        self,
        path: Path,
        model: Any,
        unwrapped: nn.Module,
        optimizer: Any,
        scheduler: Any,
        ema: EMA | None,
        data: ResumableIterable,
        resolved: dict[str, Any],
        ds_load: str | None,
    ) -> int:
        info = distributed.rank_info()
        meta = ckpt.read_meta(path)
        step = int(meta["step"])
        if meta.get("backend", "ddp") != self.cfg.backend:
            raise A2PError(
                f"{path} was written by backend {meta.get('backend')!r}, this run uses {self.cfg.backend!r}"
            )
        saved_config = json.loads((path / "config.json").read_text())
        ignored = {"train.max_steps"}
        old, new = _flatten(saved_config), _flatten(resolved)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in ignored)
        if changed and info.is_main:
            logger.warning(
                "resuming %s with a changed config: %s",
                path,
                ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed),
            )
        saved_world = int(meta["world_size"])
        if ds_load == ckpt.UNIVERSAL_TAG and info.is_main:
            logger.warning(
                "%s holds ZeRO shards of %d rank(s), this run has %d: the fp32 weights and optimizer "
                "moments are re-cut from its universal form (%s/%s)",
                path,
                saved_world,
                info.world_size,
                ckpt.DEEPSPEED_DIR,
                ckpt.UNIVERSAL_TAG,
            )
        if ds_load in (ckpt.ENGINE_TAG, ckpt.UNIVERSAL_TAG):
            load_dir, _ = model.load_checkpoint(
                str(path / ckpt.DEEPSPEED_DIR),
                tag=ds_load,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
            if load_dir is None:
                raise A2PError(f"{path}: DeepSpeed could not load its {ds_load} checkpoint")
        elif ds_load is None:
            unwrapped.load_state_dict(ckpt.load_file(path, "model.pt"))
            optimizer.load_state_dict(ckpt.load_file(path, "optimizer.pt"))
        scheduler.load_state_dict(ckpt.load_file(path, "scheduler.pt"))
        if ema is not None:
            if (path / "ema.pt").is_file():
                ema.load_state_dict(ckpt.load_file(path, "ema.pt"))
            else:
                logger.warning("%s has no EMA; the average restarts from the current weights", path)
                ema.update(unwrapped, 0)  # step 0 <= start_step: a plain copy of the weights
                ema.num_updates = 0

        if saved_world == info.world_size:
            state = ckpt.load_file(path, ckpt.rank_file_name(info.rank))
            data.load_state_dict(state["data"])
            ckpt.restore_rng(state["rng"])  # last: nothing after this may draw random numbers
        else:
            states = [ckpt.load_file(path, ckpt.rank_file_name(r))["data"] for r in range(saved_world)]
            reshard = getattr(data, "load_resharded_state", None)
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
            _seed_rank(self.cfg.seed, info.rank, step)
        logger.info("resumed from %s at step %d", path, step)
        return step


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


def _saved_world_size(checkpoint: Path) -> int:
    return int(ckpt.read_meta(checkpoint)["world_size"])


def _loss(task: Task, model: Any, batch: Any, autocast: Any) -> dict[str, torch.Tensor]:
    with autocast:
        return task.loss(model, batch)


def _save_deepspeed(engine: Any, tmp: Path) -> None:
    engine.save_checkpoint(str(tmp / ckpt.DEEPSPEED_DIR), tag=ckpt.ENGINE_TAG, save_latest=False)


_WEIGHTS_ONLY = "weights-only"
"""`ds_load` of a resume that keeps only the checkpoint's fp32 weights (set before the engine)."""


def _prepare_rescaled_resume(checkpoint: Path, raw_model: nn.Module) -> str:
    """How a DeepSpeed run resumes a checkpoint of another rank count; every rank calls it.

    An engine checkpoint without ZeRO optimizer shards (stage 0) holds the whole optimizer and
    loads as it is. ZeRO shards load through their universal form (`ckpt.UNIVERSAL_TAG`), which keeps the Adam
    moments; if DeepSpeed cannot convert them, `raw_model` gets the checkpoint's fp32 weights and
    the engine starts with fresh optimizer state (`_WEIGHTS_ONLY`).
    """
    if not any((checkpoint / ckpt.DEEPSPEED_DIR / ckpt.ENGINE_TAG).glob("*optim_states.pt")):
        return ckpt.ENGINE_TAG
    try:
        ckpt.universal_checkpoint(checkpoint)
        return ckpt.UNIVERSAL_TAG
    except A2PError as err:
        if distributed.rank_info().is_main:
            logger.warning("%s; only the fp32 weights are kept, the optimizer moments restart from zero", err)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(
        str(checkpoint / ckpt.DEEPSPEED_DIR), tag=ckpt.ENGINE_TAG
    )
    raw_model.load_state_dict(weights)
    return _WEIGHTS_ONLY


# --- ZeRO-3 -------------------------------------------------------------------------------------


def _is_partitioned(module: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions `module`'s parameters over the ranks."""
    return any(hasattr(p, "ds_tensor") for p in module.parameters())


def _gathered_parameters(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of a ZeRO-3 module's parameters, gathered one at a time on every rank.

    A collective: every rank must consume the whole iterator. Each tensor is valid until the next.
    """
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters

    for name, param in module.named_parameters(remove_duplicate=False):
        with GatheredParameters([param]):
            yield name, param.detach()


def _full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()`, with ZeRO-3 parameters gathered (collective; complete on rank 0 only)."""
    state = module.state_dict()
    if _is_partitioned(module):
        is_main = distributed.rank_info().is_main
        for name, tensor in _gathered_parameters(module):
            if is_main:
                state[name] = tensor.cpu().clone()
    return state


@torch.no_grad()
def _copy_gathered(module: nn.Module, target: nn.Module) -> None:
    """Write a ZeRO-3 module's gathered weights and its buffers into a full `target` (collective)."""
    named = dict(target.named_parameters(remove_duplicate=False))
    for name, tensor in _gathered_parameters(module):
        named[name].copy_(tensor)
    named_buffers = dict(target.named_buffers())
    for name, buf in module.named_buffers():
        named_buffers[name].copy_(buf)


class _PartitionedEMA(EMA):
    """`EMA` of a ZeRO-3 module: each rank averages its own partition of every parameter.

    DeepSpeed keeps a rank's partition of a parameter in `param.ds_tensor`: a flat slice of
    ceil(numel / world_size) elements, slices in rank order, the last padded. `EMA.update` folds
    these in, so it costs no communication and holds 1 / world_size of a full fp32 average per
    rank. Reading the whole average (`state_dict`, `copy_to`) all-gathers it, one parameter at a
    time. The saved form is the full average, as `EMA.state_dict`'s, so exports and resumes on any
    rank count read it.
    """

    def __init__(self, module: nn.Module, decay: float, start_step: int = 0) -> None:
        self.decay = decay
        self.start_step = start_step
        self.num_updates = 0
        named = _floating_parameters(module)
        self.params = {name: p.ds_tensor.detach().float().clone() for name, p in named.items()}
        self.shapes = {name: p.ds_shape for name, p in named.items()}
        self.buffers = {name: b.detach().clone() for name, b in module.named_buffers()}

    def _live(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        named = _floating_parameters(model)
        return list(self.params.values()), [named[n].ds_tensor.detach() for n in self.params]

    def _full_params(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full average) on every rank, one all-gather per parameter (collective)."""
        import torch.distributed as dist

        world = distributed.rank_info().world_size
        for name, part in self.params.items():
            parts = [part]
            if world > 1:
                parts = [torch.empty_like(part) for _ in range(world)]
                dist.all_gather(parts, part)
            shape = self.shapes[name]
            yield name, torch.cat(parts)[: shape.numel()].view(shape)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the full averages (and buffers) into a non-partitioned `model` (collective)."""
        named = dict(model.named_parameters())
        for name, full in self._full_params():
            named[name].copy_(full)
        named_buffers = dict(model.named_buffers())
        for name, buf in self.buffers.items():
            named_buffers[name].copy_(buf)

    def averaged_copy(self, model: nn.Module) -> nn.Module:
        raise TypeError("a ZeRO-3 module cannot be copied: build the model and use copy_to")

    def state_dict(self) -> dict[str, Any]:
        """`EMA.state_dict` of the full averages, on the CPU (collective; complete on rank 0 only)."""
        return {**super().state_dict(), "params": self.model_state_dict()}

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The full averages on the CPU (collective; complete on rank 0 only)."""
        is_main = distributed.rank_info().is_main
        return {name: full.cpu().clone() for name, full in self._full_params() if is_main}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's partitions of full averages saved by `state_dict` (any rank count)."""
        rank = distributed.rank_info().rank
        for group in ("params", "buffers"):
            mine, theirs = getattr(self, group), state[group]
            if set(mine) != set(theirs):
                raise KeyError(f"EMA {group} do not match the model: {sorted(set(mine) ^ set(theirs))[:3]}")
        for name, part in self.params.items():
            flat = state["params"][name].reshape(-1)[rank * part.numel() : (rank + 1) * part.numel()]
            part.zero_()
            part[: flat.numel()].copy_(flat)
        for name, buf in self.buffers.items():
            buf.copy_(state["buffers"][name])
        self.num_updates = int(state["num_updates"])


def _floating_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.is_floating_point()}


def _release_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons so a later run in this process starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(task: str, config: Any, run_dir: str | Path, resume: str | None = None) -> TrainResult:
    """Train `task` with the resolved run `config` in `run_dir` (see `Trainer`)."""
    return Trainer(task, config, run_dir, resume).run()
