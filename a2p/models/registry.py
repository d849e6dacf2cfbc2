"""Which network each task trains, so a checkpoint or export that names its task rebuilds its model.

A task's config (the `task` section of a run config, as a dataclass or as the plain mapping an
export stores) holds its model's config under `model` (face, body, vq, guide) or, for the toy
task, at its top level. `build_model(task, task_config)` picks that part out, checks it strictly
(unknown keys and wrong types are errors naming the key) and builds the network on the CPU. It
needs nothing from training: loading an export for inference goes through here alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from a2p.config.core import from_dict, to_dict
from a2p.config.denoiser import DenoiserConfig
from a2p.config.guide import GuideConfig
from a2p.config.vq import VQConfig
from a2p.errors import ConfigError
from a2p.models.denoiser import build_denoiser
from a2p.models.guide import build_guide
from a2p.models.toy import ToyModelConfig, build_toy
from a2p.models.vq import build_vq


@dataclass(frozen=True)
class ModelSpec:
    """How to build one task's network from its task config."""

    config_class: type
    """Dataclass of the network's hyper-parameters."""
    build: Callable[[Any], nn.Module]
    """The factory: config -> freshly initialised network on the CPU."""
    section: str | None = "model"
    """Key of the model config in the task config; None: its fields sit at the task config's top."""


_SPECS: dict[str, ModelSpec] = {
    "face": ModelSpec(DenoiserConfig, build_denoiser),
    "body": ModelSpec(DenoiserConfig, build_denoiser),
    "vq": ModelSpec(VQConfig, build_vq),
    "guide": ModelSpec(GuideConfig, build_guide),
    "toy": ModelSpec(ToyModelConfig, build_toy, section=None),
}


def model_tasks() -> list[str]:
    """Task names whose networks this registry builds."""
    return sorted(_SPECS)


def model_spec(task: str) -> ModelSpec:
    """The spec of task `task`'s network; an unknown task is a `ConfigError` listing the known ones."""
    if task not in _SPECS:
        raise ConfigError(f"no model is registered for task {task!r} (known: {', '.join(model_tasks())})")
    return _SPECS[task]


def model_config(task: str, task_config: Any) -> Any:
    """The network's config dataclass, taken from a task config (dataclass or mapping)."""
    spec = model_spec(task)
    data = task_config if isinstance(task_config, Mapping) else to_dict(task_config)
    if spec.section is None:
        names = {f.name for f in dataclasses.fields(spec.config_class)}
        return from_dict(spec.config_class, {k: v for k, v in data.items() if k in names}, prefix="task.")
    if spec.section not in data:
        raise ConfigError(f"task {task!r}: its config has no '{spec.section}' section")
    return from_dict(spec.config_class, dict(data[spec.section]), prefix=f"task.{spec.section}.")


def build_model(task: str, task_config: Any) -> nn.Module:
    """A freshly initialised network of task `task` on the CPU, from its task config."""
    return model_spec(task).build(model_config(task, task_config))
