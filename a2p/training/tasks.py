"""What a task gives the trainer (model, data, loss, evaluation) and the registry that names tasks.

The trainer knows tasks only through this interface and `build_task(name, config)`; it never
branches on a task's name. A task module registers itself on import:

    @register_task("face")
    class FaceTask(Task):
        config_class = FaceTaskConfig
        presets = {"paper": FaceTaskConfig(), "debug": FaceTaskConfig(...)}
        ...

and is listed in `TASK_MODULES` so `build_task` can import it on demand.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from a2p.config.core import from_dict, load_config
from a2p.config.train import TrainConfig, Units
from a2p.errors import ConfigError
from a2p.models.registry import build_model

TASK_MODULES: dict[str, str] = {
    "toy": "a2p.training.toy",
    "face": "a2p.training.diffusion_tasks",
    "body": "a2p.training.diffusion_tasks",
    "vq": "a2p.training.token_tasks",
    "guide": "a2p.training.token_tasks",
}
"""Module that registers each task, imported the first time the task is named."""


@runtime_checkable
class ResumableIterable(Protocol):
    """A training data stream whose position can be saved and restored.

    Iterating yields batches (tensors or nested dicts/lists/tuples of them), normally without end.
    `state_dict()` taken between two `next()` calls describes the position of the next batch this
    consumer will receive (not what a prefetching worker has read ahead); it holds only plain
    Python values and tensors. The trainer calls `iter()` again after `load_state_dict()`.
    """

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TaskContext:
    """Where and how a task runs; given to `build_data` and `evaluate`."""

    rank: int
    """Global rank of this process."""
    world_size: int
    """Number of data-parallel ranks."""
    device: torch.device
    """Device the model lives on; batches are moved there by the trainer."""
    seed: int
    """Run seed (`train.seed`); streams derive their own seeds from it and their rank."""
    batch_size: int
    """Samples per device per micro-step."""
    data: str
    """`train.data`: the shard folder of one person (may be empty for synthetic tasks)."""
    run_dir: Path
    """The run directory (for task artefacts such as evaluation outputs)."""
    step: int = 0
    """Optimizer step the context was made at."""
    units: Units = "train"
    """`train.units`: which normalization the data loaders use."""
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    """Mean of a tensor over ranks, for evaluations sharded across ranks."""


class Task:
    """Base class of the trainer's tasks: subclass, set `config_class`, implement its hooks.

    Required: `build_data`, `loss`. Optional: `build_model` (default: the model registry's),
    `evaluate`, `counts`.
    """

    name: ClassVar[str] = ""
    """Registry name, set by `register_task`."""
    config_class: ClassVar[type]
    """Dataclass of the task's settings (model size, data options); the `task` config section."""
    presets: ClassVar[dict[str, Any]] = {}
    """Named configs (`paper`, `debug`); `default` is used when none is named."""
    default_preset: ClassVar[str | None] = None
    train_presets: ClassVar[dict[str, TrainConfig]] = {}
    """Trainer settings per preset (the reference's recipe under `paper`); absent: `TrainConfig()`."""
    """Preset used when the user names none (None: the config class's defaults)."""
    find_unused_parameters: ClassVar[bool] = False
    """Whether DDP must look for parameters without gradient (conditional branches)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def build_model(self) -> nn.Module:
        """A freshly initialised model on the CPU (the trainer seeds the RNG and moves it).

        By default the network `a2p.models.registry` holds for the task's name, so a checkpoint
        or export of the task rebuilds it without training code; override only for a task whose
        model is not in the registry (it then cannot be exported).
        """
        return build_model(self.name, self.config)

    def build_data(self, ctx: TaskContext) -> ResumableIterable:
        """This rank's training stream of micro-batches of `ctx.batch_size` samples.

        It must not be handed to `accelerator.prepare` (that would re-shard it): the task splits
        its data by `ctx.rank`/`ctx.world_size` itself.
        """
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Losses of one micro-batch (already on the model's device, under autocast when bf16).

        `"loss"` is the scalar that is differentiated. Other 0-dim entries are logged as
        `train/NAME` (their mean over the log window and ranks); entries with a batch dimension are
        per-sample values, logged as a histogram of rank 0's samples and their mean. Return
        logged values detached.
        """
        raise NotImplementedError

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """Evaluation metrics, called on every rank with the EMA weights in eval mode.

        Values are numbers, (C, H, W) image tensors or matplotlib figures, logged as `eval/NAME`
        from rank 0. The trainer saves and restores the random streams around this call.
        """
        return {}

    def counts(self, batch: Any) -> dict[str, float]:
        """Work units of one micro-batch beyond samples, e.g. `{"frames": 4800}` (host values only)."""
        return {}


_REGISTRY: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a `Task` subclass buildable as `build_task(name, config)`."""

    def decorate(cls: type[Task]) -> type[Task]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"task {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})"
            )
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"task {name!r}: config_class must be a dataclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def task_class(name: str) -> type[Task]:
    """The registered class of task `name`, importing its module when needed."""
    if name not in _REGISTRY and name in TASK_MODULES:
        importlib.import_module(TASK_MODULES[name])
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(TASK_MODULES))
        raise ConfigError(f"unknown task {name!r} (known tasks: {', '.join(known)})")
    return _REGISTRY[name]


def available_tasks() -> list[str]:
    """Names of all tasks that can be built."""
    return sorted(set(_REGISTRY) | set(TASK_MODULES))


def build_task(name: str, config: Any = None) -> Task:
    """An instance of task `name` with `config` (its config dataclass, a mapping, or None: defaults)."""
    cls = task_class(name)
    if config is None:
        config = cls.config_class()
    elif isinstance(config, dict):
        config = from_dict(cls.config_class, config, prefix="task.")
    elif not isinstance(config, cls.config_class):
        raise ConfigError(f"task {name!r} takes a {cls.config_class.__name__}, got {type(config).__name__}")
    return cls(config)


_RUN_CONFIG_CLASSES: dict[str, type] = {}


def run_config_class(name: str) -> type:
    """The dataclass of a whole run of task `name`: sections `train` (TrainConfig) and `task`."""
    if name not in _RUN_CONFIG_CLASSES:
        task_config = task_class(name).config_class
        _RUN_CONFIG_CLASSES[name] = dataclasses.make_dataclass(
            f"{task_config.__name__}Run",
            [
                ("train", TrainConfig, field(default_factory=TrainConfig)),
                ("task", task_config, field(default_factory=task_config)),
            ],
        )
    return _RUN_CONFIG_CLASSES[name]


def load_run_config(
    name: str,
    preset: str | None = None,
    preset_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    train: TrainConfig | None = None,
) -> Any:
    """Resolve a run config: defaults (or the task preset) <- preset file <- `--set` overrides.

    `preset` names one of the task's `presets` for the `task` section and picks its
    `train_presets` entry for the trainer (default `TrainConfig()`); `train` replaces both. Unknown keys and wrong types raise `ConfigError` naming the key.
    """
    cls = task_class(name)
    preset = preset or cls.default_preset
    if preset is None:
        task_config = cls.config_class()
    elif preset in cls.presets:
        task_config = cls.presets[preset]
    else:
        raise ConfigError(
            f"task {name!r} has no preset {preset!r} (presets: {', '.join(sorted(cls.presets))})"
        )
    train = train or copy.deepcopy(cls.train_presets.get(preset or "", TrainConfig()))
    base = run_config_class(name)(train=train, task=task_config)
    return load_config(run_config_class(name), base, preset_file, overrides)
