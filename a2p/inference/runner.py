"""Batch inference: audio clips in, face and body motion out, one `.npz` per clip.

Per clip: read and check the audio -> featurize once -> guide transformer (KV cache, top-p) for
the 1 fps keyframe tokens of every repetition -> VQ decode to keyframe poses -> body diffusion on
audio + keyframes; face diffusion on audio. Repetitions and the CFG rows run as one batch.

Across processes (torchrun / accelerate launch / srun) clips are split strided by rank; every
clip's noise comes from a seed derived from (--seed, clip name), so its output does not depend on
how many processes ran the job. Each output is written to a temporary name and renamed; a rerun
skips clips whose output exists. A clip that cannot be read is reported and skipped.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from a2p.constants import (
    AUDIO_CHANNELS,
    CROP_MAX_FRAMES,
    FPS,
    KEYFRAME_INTERVAL,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
)
from a2p.data.chunks import EVAL_CHUNK_FRAMES, iter_split_chunks
from a2p.errors import A2PError, DataError
from a2p.fileio import read_json, write_atomic
from a2p.inference.plots import motion_plot, write_png
from a2p.inference.reference_results import reference_results, write_reference_results
from a2p.models.audio import featurize_long
from a2p.models.export import Exported, load_export
from a2p.sampling import repetition_generators, sample_motion
from a2p.sampling.windows import DEFAULT_OVERLAP, AllReduce, WindowPlan, generate_keyframe_codes

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
DEFAULT_GUIDANCE = {"face": 10.0, "body": 2.0}
"""Classifier-free guidance scales of the reference (DESIGN.md)."""
GUIDE_TOP_P = 0.94
PARTS = ("body", "face")
PART_KEYS = {"body": ("body", "keyframes"), "face": ("face",)}
PARTS_DIR = ".parts"
"""Per-(part, repetition) outputs wait here until their clip is assembled."""
SHARD_MODES = ("items", "windows")
REFERENCE_DIR = "reference"
"""With --results-npy: reference/CLIP/{face,body}_results.npy for the reference's renderer."""


@dataclass
class Models:
    """The four exported models a run needs, checked to fit together."""

    face: Exported
    body: Exported
    guide: Exported
    vq: Exported
    paths: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, face: str, body: str, guide: str, vq: str, device: torch.device) -> Models:
        loaded = {
            name: load_export(path, expect_task=name)
            for name, path in (("face", face), ("body", body), ("guide", guide), ("vq", vq))
        }
        for exported in loaded.values():
            exported.model.to(device).requires_grad_(False)
        featurizers = {
            name: loaded[name].config.get("featurizer", "mel") for name in ("face", "body", "guide")
        }
        if len(set(featurizers.values())) != 1:
            raise A2PError(f"the face, body and guide models use different featurizers: {featurizers}")
        vq_config, guide_config = loaded["vq"].model.config, loaded["guide"].model.config
        if (vq_config.codes, vq_config.levels) != (guide_config.codes, guide_config.levels):
            raise A2PError(
                f"{guide}: the guide predicts {guide_config.levels} x {guide_config.codes} codes, the VQ {vq} has {vq_config.levels} x {vq_config.codes}"
            )
        return cls(**loaded, paths={"face": str(face), "body": str(body), "guide": str(guide), "vq": str(vq)})

    @property
    def featurizer(self) -> str:
        return self.face.config.get("featurizer", "mel")


def read_audio(path: Path) -> tuple[np.ndarray, list[str]]:
    """(S, 2) float32 audio at 48 kHz whose length is whole frames, and warnings about fixes made."""
    warnings = []
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(f"{path}: cannot read audio ({err})") from err
    if audio.shape[1] == 1:
        audio = np.concatenate([audio, np.zeros_like(audio)], axis=1)
        warnings.append("mono audio: the partner channel is silent")
    elif audio.shape[1] != AUDIO_CHANNELS:
        raise DataError(f"{path}: {audio.shape[1]} channels; expected 2 (this person, then the partner) or 1")
    if not np.isfinite(audio).all():
        raise DataError(f"{path}: audio holds NaN or Inf")
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio.T.copy()), rate, SAMPLE_RATE).T.numpy()
        warnings.append(f"resampled from {rate} Hz to {SAMPLE_RATE} Hz")
    frames = audio.shape[0] // SAMPLES_PER_FRAME
    if frames < KEYFRAME_INTERVAL:
        raise DataError(f"{path}: {audio.shape[0] / SAMPLE_RATE:.2f} s of audio is shorter than one second")
    return np.ascontiguousarray(audio[: frames * SAMPLES_PER_FRAME]), warnings


def clip_seed(seed: int, name: str) -> int:
    """A seed that depends only on the run's seed and the clip's name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def _denormalize(x: np.ndarray, stats: dict | None, key: str) -> np.ndarray:
    if not stats:
        return x
    mean = np.asarray(stats[f"{key}_mean"], dtype=np.float32)
    std = np.asarray(stats[f"{key}_std"], dtype=np.float32)
    return x * np.where(std < 1e-6, 1.0, std) + mean


@dataclass(frozen=True)
class Sharing:
    """How one clip's windows are shared between ranks (rank 0 of 1: not shared)."""

    rank: int = 0
    world_size: int = 1
    all_reduce: AllReduce | None = None


@dataclass(frozen=True)
class Windowing:
    """Model window and overlap (frames) for clips longer than a window."""

    window: int = CROP_MAX_FRAMES
    overlap: int = DEFAULT_OVERLAP
    batch: int = 8
    """Windows per forward pass."""


@dataclass(frozen=True)
class PreparedClip:
    """A clip's audio features, computed once for both parts, and how it is sampled."""

    frames: int
    """Motion frames of the clip."""
    length: int
    """Frames sampled: `frames`, padded to whole keyframes when the clip is windowed."""
    plan: WindowPlan | None
    """Its windows, when it is longer than one."""
    features: torch.Tensor
    """(1, F, C) features of the (padded) audio."""


@torch.no_grad()
def prepare_clip(
    featurizer: torch.nn.Module, audio: np.ndarray, windowing: Windowing, device: torch.device
) -> PreparedClip:
    """Featurize a clip once; a clip longer than a window is padded to whole keyframes and planned."""
    frames = audio.shape[0] // SAMPLES_PER_FRAME
    plan = None
    if frames > windowing.window:  # pad to whole keyframes; the padding is cut off after sampling
        padded = math.ceil(frames / KEYFRAME_INTERVAL) * KEYFRAME_INTERVAL
        audio = np.pad(audio, ((0, (padded - frames) * SAMPLES_PER_FRAME), (0, 0)))
        plan = WindowPlan.build(padded, windowing.window, windowing.overlap)
    with torch.autocast(device.type, enabled=False):  # features in float32 even under --bf16
        features = featurize_long(featurizer, torch.from_numpy(audio)[None].to(device))
    return PreparedClip(frames, audio.shape[0] // SAMPLES_PER_FRAME, plan, features)


@torch.no_grad()
def sample_part(
    models: Models,
    clip: PreparedClip,
    part: str,
    reps: list[int],
    *,
    setting: str,
    seed: int,
    device: torch.device,
    windowing: Windowing = Windowing(),
    sharing: Sharing = Sharing(),
    guidance: float | None = None,
) -> dict[str, np.ndarray]:
    """One part ("face" or "body", with its keyframes) of the repetitions `reps` of one clip.

    Every repetition's guide tokens and noise come from generators seeded by (seed, repetition),
    so a repetition's result does not depend on which others share its batch.
    """
    frames, features = clip.frames, clip.features
    window_args = {"plan": clip.plan, "window_batch": windowing.batch, **vars(sharing)}
    scale = DEFAULT_GUIDANCE[part] if guidance is None else guidance
    if part == "face":
        face = sample_motion(
            models.face.model, features, clip.length, reps=len(reps), setting=setting,
            guidance=scale, generators=repetition_generators(seed + 1, reps, device), **window_args,
        )  # fmt: skip
        return {"face": _denormalize(face[:, :frames].float().cpu().numpy(), models.face.stats, "face")}
    token_generators = [torch.Generator(device=device).manual_seed(seed * 7919 + rep) for rep in reps]
    rows = features.expand(len(reps), *features.shape[1:])
    keyframes = math.ceil(frames / KEYFRAME_INTERVAL)
    if clip.plan is None:
        codes = models.guide.model.generate(rows, keyframes, top_p=GUIDE_TOP_P, generator=token_generators)
    else:
        codes = generate_keyframe_codes(
            models.guide.model, rows, clip.plan, top_p=GUIDE_TOP_P, generator=token_generators
        )
    guide = models.vq.model.decode_codes(codes)  # (reps, K, 104), normalized like the body
    body = sample_motion(
        models.body.model, features, clip.length, guide=guide, reps=len(reps), setting=setting,
        guidance=scale, generators=repetition_generators(seed, reps, device), **window_args,
    )  # fmt: skip
    stats = models.body.stats
    return {
        "body": _denormalize(body[:, :frames].float().cpu().numpy(), stats, "body"),
        "keyframes": _denormalize(guide[:, :keyframes].float().cpu().numpy(), stats, "body"),
    }


def sample_clip(
    models: Models,
    featurizer: torch.nn.Module,
    audio: np.ndarray,
    *,
    reps: int,
    setting: str,
    seed: int,
    device: torch.device,
    windowing: Windowing = Windowing(),
    sharing: Sharing = Sharing(),
    guidance: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Face (reps, T, 256), body (reps, T, 104) and keyframes (reps, K, 104) of one clip."""
    clip = prepare_clip(featurizer, audio, windowing, device)  # once for both parts
    arrays: dict[str, np.ndarray] = {}
    for part in PARTS:
        arrays |= sample_part(
            models, clip, part, list(range(reps)), setting=setting, seed=seed, device=device,
            windowing=windowing, sharing=sharing, guidance=(guidance or DEFAULT_GUIDANCE)[part],
        )  # fmt: skip
    return arrays


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray | str | int | float]) -> None:
    write_atomic(path, lambda f: np.savez(f, **arrays))


@dataclass(frozen=True)
class Clip:
    """One clip to sample: its output name, where it came from, and how to read its audio."""

    name: str
    source: str
    read: Callable[[], tuple[np.ndarray, list[str]]]


def file_clips(inputs: list[str]) -> list[Clip]:
    """Audio files named directly, found in directories, or listed one per line in .txt files."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.suffix == ".txt":
            paths += [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
        else:
            paths.append(path)
    names = [path.stem for path in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise A2PError(f"several clips share the name(s) {duplicates}: outputs are named by clip")
    return [Clip(path.stem, str(path), partial(read_audio, path)) for path in paths]


def split_clips(shard_dir: str | Path, split: str = "test", chunk: int = EVAL_CHUNK_FRAMES) -> Iterator[Clip]:
    """The `chunk`-frame chunks of a shard set's split, in order, each frame of a scene at most once.

    Shards hold overlapping windows of every scene; a chunk is kept when it is whole and starts at
    or after the end of the scene's last kept chunk. Names are `{scene}_{first frame:06d}`. The
    ground truth of the same chunks comes from the same `iter_split_chunks`.
    """
    for key, _first, batch in iter_split_chunks(shard_dir, split, chunk, audio=True):
        audio = batch["audio"][0].numpy()
        yield Clip(f"{key}", f"{shard_dir}:{split}:{key}", lambda audio=audio: (audio, []))


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
    models: Models,
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

    from a2p.models.audio import build_featurizer

    if settings.shard not in SHARD_MODES:
        raise A2PError(f"unknown shard mode {settings.shard!r}: choose from {', '.join(SHARD_MODES)}")
    collectives = collectives or Collectives()
    out_dir.mkdir(parents=True, exist_ok=True)
    check_run_record(out_dir, run_record(models, settings), write=rank == 0)
    featurizer = build_featurizer(models.featurizer).to(device)
    summary = Summary()
    names: list[str] = []
    sources: dict[str, str] = {}
    job = _Job(models, featurizer, out_dir, settings, rank, world_size, device, collectives, summary)
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
    featurizer: torch.nn.Module
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
    prepared = prepare_clip(job.featurizer, audio, settings.windowing, job.device)  # once for both parts
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
    arrays = sample_clip(
        job.models, job.featurizer, audio, reps=settings.reps, setting=settings.setting,
        seed=clip_seed(settings.seed, clip.name), device=job.device, windowing=settings.windowing,
        sharing=Sharing(job.rank, job.world_size, all_reduce), guidance=settings.guidance,
    )  # fmt: skip
    if job.rank == 0:
        _write_clip(job.out_dir, clip.name, clip.source, arrays, audio, job.models, settings)
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
    _write_clip(out_dir, name, source, arrays, audio, models, settings)
    summary.assembled.append(name)
    for path in paths.values():
        path.unlink()
    try:
        paths[(PARTS[0], 0)].parent.rmdir()
    except OSError:
        pass


def _write_clip(
    out_dir: Path,
    name: str,
    source: str,
    arrays: dict[str, np.ndarray],
    audio: np.ndarray | None,
    models: Models,
    settings: RunSettings,
) -> None:
    """The clip's outputs; the .npz last, so a clip whose .npz exists is complete."""
    if (settings.plot or settings.results_npy) and audio is None:
        logger.warning("%s: no audio file to plot or store beside the motion (sampled from shards?)", name)
    elif settings.plot:
        write_png(
            out_dir / f"{name}.png", motion_plot(audio, arrays["face"], arrays["body"], FPS, SAMPLE_RATE)
        )
    if settings.results_npy and audio is not None:
        results = reference_results(arrays["face"], arrays["body"], audio, keyframes=arrays["keyframes"])
        write_reference_results(out_dir / REFERENCE_DIR / name, results)
    write_npz_atomic(
        out_dir / f"{name}.npz",
        {
            **arrays,
            "fps": FPS,
            "sampler": settings.setting,
            "seed": clip_seed(settings.seed, name),
            "source": source,
            "models": json.dumps(models.paths),
            "guidance": json.dumps(settings.guidance),
            "window": settings.windowing.window,
            "overlap": settings.windowing.overlap,
        },
    )
