"""The `deepspeed` backend: a DeepSpeed engine (ZeRO-1/2/3) built from `ds_configs/*.json`.

The engine accumulates, clips and steps by its config, which `deepspeed_config` checks against and
completes from the trainer's. It saves its optimizer state (and under ZeRO-3 its weights) as one
shard per rank in `step_N/deepspeed/engine/`. A resume on another rank count converts those
shards once into DeepSpeed's universal form (`step_N/deepspeed/universal/`), which keeps each
parameter's fp32 weights and Adam moments whole and is re-cut for the new rank count.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from a2p import distributed
from a2p.config.train import TrainConfig
from a2p.errors import A2PError, ConfigError
from a2p.fileio import fsync_dir, read_json
from a2p.training.backends import Backend, FiniteFn, LossFn, NonFiniteStep
from a2p.training.checkpoint import MODEL_FILE
from a2p.training.run_dir import read_meta

logger = logging.getLogger(__name__)

DEEPSPEED_DIR = "deepspeed"
"""Folder of a step directory that holds the DeepSpeed engine's checkpoint."""
ENGINE_TAG = "engine"
"""DeepSpeed tag (sub-folder of `deepspeed/`) of the ZeRO shards as the engine wrote them."""
UNIVERSAL_TAG = "universal"
"""DeepSpeed tag (sub-folder of `deepspeed/`) of their universal form, loadable on any rank count."""
WEIGHTS_ONLY = "weights-only"
"""How a resume loads when the shards cannot be converted: the fp32 weights, set before the engine."""


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
        "train_micro_batch_size_per_gpu": config.rank_batch_size(world_size),
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.rank_batch_size(world_size) * config.grad_accum * world_size,
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


class DeepSpeedBackend(Backend):
    """Micro-steps through a DeepSpeed engine; every rank writes its shard of a checkpoint."""

    name = "deepspeed"

    def __init__(self, config: TrainConfig, accelerator: Any, ds_config: dict[str, Any]) -> None:
        super().__init__(config, accelerator)
        self.ds_config = ds_config
        self.load_tag = ENGINE_TAG
        self._stepped = False

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, resume_from: Path | None) -> None:
        import deepspeed

        ds_config = self.ds_config
        if (
            resume_from is not None
            and int(read_meta(resume_from)["world_size"]) != distributed.rank_info().world_size
        ):
            self.load_tag = prepare_rescaled_resume(resume_from, model)
            if self.load_tag == UNIVERSAL_TAG:
                checkpoint = {**ds_config.get("checkpoint", {}), "load_universal": True}
                ds_config = {**ds_config, "checkpoint": checkpoint}
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config
        )
        self.module = self.model.module

    def micro_step(self, loss_fn: LossFn, finite: FiniteFn) -> tuple[dict[str, torch.Tensor], Any, bool]:
        out = loss_fn()
        if not finite(out):  # the engine's step cannot be skipped: stop before it sees the loss
            raise NonFiniteStep(
                f"the loss is not finite ({float(out['loss'])}); a DeepSpeed run stops at the first "
                "such micro-batch, before the weights change"
            )
        self.model.backward(out["loss"])  # scales by 1 / gradient_accumulation_steps itself
        before = self.model.global_steps
        self.model.step()
        self._stepped = self.model.global_steps != before
        norm = self.model.get_global_grad_norm() if self._stepped else None
        if norm is not None and not math.isfinite(float(norm)):
            raise NonFiniteStep(f"the gradient norm is not finite ({float(norm)}) after the optimizer step")
        return out, norm, False

    def at_boundary(self) -> bool:
        return self._stepped

    def checkpoint_files(self) -> tuple[dict[str, Any], Callable[[Path], None] | None]:
        # model.pt holds the module's (possibly bf16) weights, gathered under ZeRO-3, so exports
        # never need the engine; optimizer state and fp32 master weights are in the engine's shards.
        return {MODEL_FILE: self.full_state_dict()}, functools.partial(_save_engine, self.model)

    def load(self, checkpoint: Path) -> None:
        if self.load_tag == WEIGHTS_ONLY:
            return  # set into the module before the engine was built
        if self.load_tag == UNIVERSAL_TAG and distributed.rank_info().is_main:
            logger.warning(
                "%s holds ZeRO shards of %d rank(s), this run has %d: the fp32 weights and optimizer "
                "moments are re-cut from its universal form (%s/%s)",
                checkpoint,
                int(read_meta(checkpoint)["world_size"]),
                distributed.rank_info().world_size,
                DEEPSPEED_DIR,
                UNIVERSAL_TAG,
            )
        load_dir, _ = self.model.load_checkpoint(
            str(checkpoint / DEEPSPEED_DIR),
            tag=self.load_tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if load_dir is None:
            raise A2PError(f"{checkpoint}: DeepSpeed could not load its {self.load_tag} checkpoint")


def _save_engine(engine: Any, tmp: Path) -> None:
    engine.save_checkpoint(str(tmp / DEEPSPEED_DIR), tag=ENGINE_TAG, save_latest=False)


def prepare_rescaled_resume(checkpoint: Path, raw_model: nn.Module) -> str:
    """How a DeepSpeed run resumes a checkpoint of another rank count; every rank calls it.

    An engine checkpoint without ZeRO optimizer shards (stage 0) holds the whole optimizer and
    loads as it is. ZeRO shards load through their universal form (`UNIVERSAL_TAG`), which keeps
    the Adam moments; if DeepSpeed cannot convert them, `raw_model` gets the checkpoint's fp32
    weights and the engine starts with fresh optimizer state (`WEIGHTS_ONLY`).
    """
    if not any((checkpoint / DEEPSPEED_DIR / ENGINE_TAG).glob("*optim_states.pt")):
        return ENGINE_TAG
    try:
        universal_checkpoint(checkpoint)
        return UNIVERSAL_TAG
    except A2PError as err:
        if distributed.rank_info().is_main:
            logger.warning("%s; only the fp32 weights are kept, the optimizer moments restart from zero", err)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / DEEPSPEED_DIR), tag=ENGINE_TAG)
    raw_model.load_state_dict(weights)
    return WEIGHTS_ONLY


def universal_checkpoint(checkpoint: str | Path) -> Path:
    """The universal form of a checkpoint's ZeRO shards, converted on first use; every rank calls it.

    ZeRO shards are cut for the rank count that wrote them. An engine configured with
    `"checkpoint": {"load_universal": true}` re-cuts the universal form for its own rank count.
    Rank 0 converts `deepspeed/engine/` into a temp folder and renames it to `deepspeed/universal/`,
    so it is either complete or absent, is reused by a later resume and goes away with its
    checkpoint. The other ranks wait for it on the file system, not in a collective, so a long
    conversion cannot run into the process group's timeout (`train.dist_timeout_s`); rank 0 writes
    a failure note named by a token of this attempt (shared first, in one quick collective).
    Returns the `deepspeed/` folder to load with tag `UNIVERSAL_TAG`. Raises `A2PError` on every
    rank if the conversion fails.
    """
    root = Path(checkpoint) / DEEPSPEED_DIR
    final = root / UNIVERSAL_TAG
    token = distributed.all_gather_objects(os.urandom(8).hex())[0]  # rank 0's, on every rank
    failed = root / f".universal-failed-{token}"
    error = None
    if distributed.rank_info().is_main and not final.is_dir():
        try:
            _convert_to_universal(root / ENGINE_TAG, final)
        except Exception as err:  # any failure of the converter is reported on every rank below
            logger.debug("universal conversion failed", exc_info=True)
            error = f"{type(err).__name__}: {err}"
            root.mkdir(parents=True, exist_ok=True)
            failed.write_text(error)
    waited = 0.0
    while not (final.is_dir() or failed.is_file()):
        time.sleep(1.0)
        waited += 1.0
        if waited % 60 == 0:
            logger.info(
                "rank %d: waiting %.0f s for rank 0 to convert %s", distributed.rank_info().rank, waited, root
            )
    if failed.is_file():
        error = error or failed.read_text()
    distributed.barrier()  # everyone has read the note before it goes
    if distributed.rank_info().is_main:
        failed.unlink(missing_ok=True)
    if error:
        raise A2PError(
            f"{root / ENGINE_TAG}: conversion to a DeepSpeed universal checkpoint failed ({error})"
        )
    return root


def _convert_to_universal(engine_dir: Path, final: Path) -> None:
    """Run DeepSpeed's `ds_to_universal` on `engine_dir`, writing `final` atomically."""
    from deepspeed.checkpoint import ds_to_universal

    if not engine_dir.is_dir():
        raise A2PError(f"{engine_dir}: no DeepSpeed engine checkpoint to convert")
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a conversion that crashed
    # The converter also writes `latest_universal` beside its output: keep that inside tmp.
    out = tmp / final.name
    args = argparse.Namespace(
        input_folder=str(engine_dir),
        output_folder=str(out),
        num_extract_workers=1,  # in this process: no process pool
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # ZeRO-1/2 engines do not record the (empty) model-parallel info
    )
    printed = io.StringIO()
    logger.info("converting %s to a DeepSpeed universal checkpoint", engine_dir)
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        ds_to_universal.main(args)
    logger.debug("ds_to_universal: %s", printed.getvalue())
    for path in out.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    os.replace(out, final)
    fsync_dir(final.parent)
    shutil.rmtree(tmp, ignore_errors=True)
