"""a2p.training: one trainer (`trainer.py`) for every task registered in `tasks.py`.

`train(task, config, run_dir, resume)` runs a task; `load_run_config(task, ...)` resolves its
config; `Task`/`register_task` are what a model's training task implements and registers.
"""

from a2p.training.tasks import (
    ResumableIterable,
    Task,
    TaskContext,
    available_tasks,
    build_task,
    load_run_config,
    register_task,
    run_config_class,
)
from a2p.training.trainer import TrainResult, train

__all__ = [
    "ResumableIterable",
    "Task",
    "TaskContext",
    "TrainResult",
    "available_tasks",
    "build_task",
    "load_run_config",
    "register_task",
    "run_config_class",
    "train",
]
