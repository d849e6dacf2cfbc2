"""A sampling job over ranks: (clip, part, repetition) items, part files, assembly, resume.

Across processes (torchrun / accelerate launch / srun) the items of every clip are split strided
by rank; a rank samples its repetitions of one part of one clip as one batch and writes one part
file per item atomically; after a barrier one rank per clip assembles `CLIP.npz` and removes the
parts. With `shard="windows"` every rank works on every clip together, each on its block of the
clip's windows. Every clip's noise comes from a seed derived from (--seed, clip name), so its
output does not depend on how many processes ran the job; a rerun skips finished items and
clips. A clip that cannot be read is reported and skipped. `a2p_sample.json` records what decides
the outputs, and a rerun into the same folder with other settings is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from a2p.errors import A2PError, DataError
from a2p.fileio import read_json, write_atomic
from a2p.inference.clips import Clip, clip_seed, read_audio
from a2p.inference.pipeline import (
    DEFAULT_GUIDANCE,
    PARTS,
    Models,
    Pipeline,
    Sharing,
    Windowing,
    sample_part,
)
from a2p.inference.writers import write_clip, write_npz_atomic
from a2p.sampling.windows import AllReduce

logger = logging.getLogger(__name__)

PART_KEYS = {"body": ("body", "keyframes"), "face": ("face",)}
"""The arrays each part's files hold."""
PARTS_DIR = ".parts"
"""Per-(part, repetition) outputs wait here until their clip is assembled."""
SHARD_MODES = ("items", "windows")


@dataclass
class Summary:
    """What one rank did."""

    done: list[str] = field(default_factory=list)
    """Items (clip/part/rep) sampled."""
    skipped: list[str] = field(default_factory=list)
    """Items already done by an earlier run."""
    failed: dict[str, str] = field(default_factory=dict)
    """Clip -> why it could not be sampled."""
    assembled: list[str] = field(default_factory=list)
    """Clips whose output file this rank wrote."""


@dataclass
class Collectives:
    """What ranks need from each other: no-ops for one process."""

    barrier: Callable[[], None] = lambda: None
    all_reduce: AllReduce | None = None
    any_rank: Callable[[bool], bool] = lambda flag: flag


@dataclass
class RunSettings:
    """Everything that decides an output, besides the models and the clip."""

    reps: int = 3
    setting: str = "ddim500"
    seed: int = 0
    windowing: Windowing = field(default_factory=Windowing)
    shard: str = "items"
    """items: (clip, part, repetition) items split over ranks; windows: every clip's windows split over ranks."""
    results_npy: bool = False
    plot: bool = False
    bf16: bool = False
    """Run the networks under bfloat16 autocast (the sampler's state stays float32)."""
    guidance: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GUIDANCE))
    """Classifier-free guidance scale per part."""


RUN_RECORD = "a2p_sample.json"
"""The settings an output folder was sampled with; a rerun must match them."""


def run_record(models: Models, settings: RunSettings) -> dict:
    """Everything that decides the arrays in an output folder (not how the work was split)."""
    return {
        "models": {name: str(Path(path).resolve()) for name, path in models.paths.items()},
        "reps": settings.reps,
        "sampler": settings.setting,
        "seed": settings.seed,
        "guidance": settings.guidance,
        "window": settings.windowing.window,
        "overlap": settings.windowing.overlap,
        "bf16": settings.bf16,
    }


def check_run_record(out_dir: Path, record: dict, write: bool) -> None:
    """Refuse to add to a folder sampled with other settings; record them in a new one."""
    path = out_dir / RUN_RECORD
    if path.is_file():
        saved = read_json(path, "a2p sample settings record")
        changed = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
        if changed:
            raise A2PError(
                f"{out_dir} holds outputs sampled with other settings ("
                + ", ".join(f"{k}: {saved.get(k)!r} -> {record.get(k)!r}" for k in changed)
                + "); sample into another --out, or remove the folder"
            )
    elif write:
        write_atomic(path, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))


def part_path(out_dir: Path, clip: str, part: str, rep: int) -> Path:
    return out_dir / PARTS_DIR / clip / f"{part}-{rep}.npz"


def run(
    clips: Iterable[Clip],
    pipeline: Pipeline,
    out_dir: Path,
    settings: RunSettings,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    collectives: Collectives | None = None,
    progress: bool = True,
) -> Summary:
    """Sample this rank's share of `clips` into out_dir (see the module doc), then assemble outputs."""
    from tqdm import tqdm

    if settings.shard not in SHARD_MODES:
        raise A2PError(f"unknown shard mode {settings.shard!r}: choose from {', '.join(SHARD_MODES)}")
    collectives = collectives or Collectives()
    out_dir.mkdir(parents=True, exist_ok=True)
    models = pipeline.models
    check_run_record(out_dir, run_record(models, settings), write=rank == 0)
    if pipeline.windowing != settings.windowing:
        pipeline = Pipeline(models, pipeline.front_end, device, settings.windowing)
    summary = Summary()
    names: list[str] = []
    sources: dict[str, str] = {}
    job = _Job(models, pipeline, out_dir, settings, rank, world_size, device, collectives, summary)
    bar = tqdm(clips, desc="clips", disable=not progress, unit="clip")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    for index, clip in enumerate(bar):
        names.append(clip.name)
        sources[clip.name] = clip.source
        with autocast:
            if settings.shard == "windows":
                _run_clip_windows(job, clip)
            else:
                _run_clip_items(job, clip, index)
    collectives.barrier()  # every part of every clip is written
    if settings.shard == "items":
        for index, name in enumerate(names):
            if index % world_size == rank and name not in summary.failed:
                _assemble(out_dir, name, sources[name], models, settings, summary)
    collectives.barrier()
    return summary


@dataclass
class _Job:
    """One rank's part of a run: what every clip needs."""

    models: Models
    pipeline: Pipeline
    out_dir: Path
    settings: RunSettings
    rank: int
    world_size: int
    device: torch.device
    collectives: Collectives
    summary: Summary


def _run_clip_items(job: _Job, clip: Clip, index: int) -> None:
    """Sample this rank's (part, repetition) items of one clip; repetitions of a part share a batch."""
    settings, summary, out_dir = job.settings, job.summary, job.out_dir
    items = [(part, rep) for part in PARTS for rep in range(settings.reps)]
    first = index * len(items)  # global item numbers run clip by clip
    mine = [item for k, item in enumerate(items) if (first + k) % job.world_size == job.rank]
    if not mine:
        return
    if (out_dir / f"{clip.name}.npz").exists():
        summary.skipped += [f"{clip.name}/{part}/{rep}" for part, rep in mine]
        return
    todo: dict[str, list[int]] = {}
    for part, rep in mine:
        if part_path(out_dir, clip.name, part, rep).exists():
            summary.skipped.append(f"{clip.name}/{part}/{rep}")
        else:
            todo.setdefault(part, []).append(rep)
    if not todo:
        return
    audio = _read(clip, summary)
    if audio is None:
        return
    seed = clip_seed(settings.seed, clip.name)
    prepared = job.pipeline.prepare(audio)  # once for both parts
    for part, reps in todo.items():
        arrays = sample_part(
            job.models, prepared, part, reps, setting=settings.setting, seed=seed, device=job.device,
            windowing=settings.windowing, guidance=settings.guidance[part],
        )  # fmt: skip
        for row, rep in enumerate(reps):
            target = part_path(out_dir, clip.name, part, rep)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_npz_atomic(target, {key: value[row] for key, value in arrays.items()})
            summary.done.append(f"{clip.name}/{part}/{rep}")


def _run_clip_windows(job: _Job, clip: Clip) -> None:
    """Sample one whole clip on every rank together, its windows split over the ranks."""
    settings, summary = job.settings, job.summary
    items = [f"{clip.name}/{part}/{rep}" for part in PARTS for rep in range(settings.reps)]
    if not job.collectives.any_rank(not (job.out_dir / f"{clip.name}.npz").exists()):
        summary.skipped += items if job.rank == 0 else []
        return
    audio = _read(clip, summary)
    if audio is None:  # every rank reads the same file and fails the same way
        return
    all_reduce = job.collectives.all_reduce if job.world_size > 1 else None
    arrays = job.pipeline.sample(
        audio, reps=settings.reps, setting=settings.setting, seed=clip_seed(settings.seed, clip.name),
        face_guidance=settings.guidance["face"], body_guidance=settings.guidance["body"],
        sharing=Sharing(job.rank, job.world_size, all_reduce),
    )  # fmt: skip
    if job.rank == 0:
        _write_outputs(job.out_dir, clip.name, clip.source, arrays, audio, job.models, settings)
        summary.done += items
        summary.assembled.append(clip.name)


def _read(clip: Clip, summary: Summary) -> np.ndarray | None:
    try:
        audio, warnings = clip.read()
    except DataError as err:
        logger.error("skipping %s", err)
        summary.failed[clip.name] = str(err)
        return None
    for warning in warnings:
        logger.warning("%s: %s", clip.source, warning)
    return audio


def _assemble(
    out_dir: Path, name: str, source: str, models: Models, settings: RunSettings, summary: Summary
) -> None:
    """Gather a clip's part files into its output file, then remove them."""
    target = out_dir / f"{name}.npz"
    if target.exists():
        return
    paths = {
        (part, rep): part_path(out_dir, name, part, rep) for part in PARTS for rep in range(settings.reps)
    }
    missing = [f"{part}-{rep}" for (part, rep), path in paths.items() if not path.exists()]
    if missing:
        logger.error("%s: parts %s are missing (a rank failed?); rerun to finish them", name, missing)
        summary.failed[name] = f"parts missing: {missing}"
        return
    loaded = {key: dict(np.load(path)) for key, path in paths.items()}
    arrays = {
        key: np.stack([loaded[(part, rep)][key] for rep in range(settings.reps)])
        for part, keys in PART_KEYS.items()
        for key in keys
    }
    audio = None
    if settings.plot or settings.results_npy:
        audio, _ = read_audio(Path(source)) if Path(source).is_file() else (None, [])
    _write_outputs(out_dir, name, source, arrays, audio, models, settings)
    summary.assembled.append(name)
    for path in paths.values():
        path.unlink()
    try:
        paths[(PARTS[0], 0)].parent.rmdir()
    except OSError:
        pass


def _write_outputs(
    out_dir: Path,
    name: str,
    source: str,
    arrays: dict[str, np.ndarray],
    audio: np.ndarray | None,
    models: Models,
    settings: RunSettings,
) -> None:
    fields = {
        "sampler": settings.setting,
        "seed": clip_seed(settings.seed, name),
        "source": source,
        "models": json.dumps(models.paths),
        "guidance": json.dumps(settings.guidance),
        "window": settings.windowing.window,
        "overlap": settings.windowing.overlap,
    }
    write_clip(out_dir, name, arrays, audio, fields, plot=settings.plot, results_npy=settings.results_npy)
