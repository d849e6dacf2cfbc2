"""A run directory: one task's run, its resolved config, its checkpoints, `latest` and keep-last-K.

    RUN_DIR/
      run.json          task name and a2p version: a run directory holds one task's run
      config.json       resolved config, written before step 0
      tensorboard/      event files (rank 0)
      checkpoints/
        latest          text file naming the newest step directory ("step_000300")
        step_000200/    one checkpoint each (`a2p.training.checkpoint`)
        step_000300/

`check_run_dir` runs on every rank before any model is built; `write_run_files` on rank 0.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from a2p.errors import A2PError
from a2p.fileio import read_json, write_atomic
from a2p.version import __version__

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""File of a run directory naming its task."""
CONFIG_FILE = "config.json"
"""Resolved config of a run directory, written before step 0 (and into every checkpoint)."""
TENSORBOARD_DIR = "tensorboard"
"""Folder of the TensorBoard event files."""
CHECKPOINTS = "checkpoints"
"""Folder of a run directory that holds the step directories."""
LATEST = "latest"
"""Name of the pointer file naming the newest step directory."""
META = "meta.json"
"""Metadata file of a step directory, the last one written into it."""

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: str | Path) -> Path:
    """The `checkpoints` folder of a run directory."""
    return Path(run_dir) / CHECKPOINTS


def step_dir_name(step: int) -> str:
    """`step_000100` for step 100 (at least six digits, so names sort by step up to 10^6)."""
    return f"step_{step:06d}"


def write_text(path: Path, text: str) -> None:
    """A small text file, written atomically."""
    write_atomic(path, lambda f: f.write(text.encode()))


def read_meta(checkpoint: str | Path) -> dict[str, Any]:
    """meta.json of a step directory."""
    path = Path(checkpoint) / META
    if not path.is_file():
        raise A2PError(f"{checkpoint}: not a checkpoint directory (no {META})")
    return read_json(path, "checkpoint metadata")


# --- finding checkpoints --------------------------------------------------------------------


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete step directories under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The step directory `latest` names; if that is gone, the newest complete one; else None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / META).is_file():
            return target
        logger.warning("%s names %s, which is missing; using the newest complete checkpoint", pointer, target)
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def point_latest(root: Path, name: str) -> None:
    """Make `latest` name step directory `name` (atomically)."""
    write_text(root / LATEST, name + "\n")


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step directories (never the one `latest` names; 0 keeps all)."""
    if keep <= 0:
        return []
    found = list_checkpoints(root)
    latest = latest_checkpoint(root)
    removed = []
    for _, path in found[:-keep]:
        if latest is not None and path.resolve() == latest.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` means: None for a fresh start, `latest`, or a step directory path.

    `latest` in a run without checkpoints is a fresh start (a requeued job preempted before its
    first save); a path that is not a checkpoint is an error.
    """
    if resume is None:
        return None
    if resume == LATEST:
        return latest_checkpoint(checkpoint_root(run_dir))
    path = Path(resume)
    if (path / CHECKPOINTS).is_dir() or (path / LATEST).is_file():
        found = latest_checkpoint(path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path)
        if found is None:
            raise A2PError(f"--resume {resume}: no checkpoint in it")
        return found
    read_meta(path)
    return path


# --- the run's own files --------------------------------------------------------------------


def check_run_dir(run_dir: Path, task: str, resume: str | None) -> Path | None:
    """Refuse a run directory that holds another task's run; return the checkpoint to resume.

    Called on every rank before any model is built. A fresh start (`resume` None) in a directory
    that already has checkpoints is refused, so a run is never silently mixed with another.
    """
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        recorded = read_json(run_file, "run file").get("task")
        if recorded != task:
            raise A2PError(
                f"{run_dir} holds a {recorded!r} run; it cannot continue as task {task!r} "
                "(choose another --run-dir)"
            )
    checkpoint = resolve_resume(run_dir, resume)
    if resume is None:
        existing = list_checkpoints(checkpoint_root(run_dir))
        if existing:
            raise A2PError(
                f"{run_dir} already has checkpoints up to step {existing[-1][0]}; "
                "pass --resume latest to continue it or choose a new --run-dir"
            )
    if checkpoint is not None:
        meta = read_meta(checkpoint)
        if meta.get("task") != task:
            raise A2PError(f"checkpoint {checkpoint} is of task {meta.get('task')!r}, not {task!r}")
    return checkpoint


def write_run_files(run_dir: Path, task: str, config: dict[str, Any]) -> None:
    """run.json (once) and the resolved config.json (rank 0, before step 0)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        write_text(run_file, json.dumps({"task": task, "a2p_version": __version__}, indent=2) + "\n")
    write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
