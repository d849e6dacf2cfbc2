"""Convert one person folder of recorded scenes into WebDataset shards (`a2p data build`).

1. Find the scenes and give each its split by scene order. Read and validate every scene (in
   parallel), recording source checksums and the train split's moments. Any bad input stops the
   build here, with every bad file named, before a single shard is written; so does one recording
   in two scenes (a number written two ways, or byte-identical audio or poses under two numbers),
   which would put train data into test.
2. Cut each scene into windows and encode them (`data_tools.encode`) in parallel over scenes,
   while this process packs them in order (scenes in order, windows in order) into shards closed at
   the size bound; so which window lands in which shard depends only on the inputs and settings.
3. Write this part's record, then (one part) the manifest, atomically, last.

Resumable: see `data_tools.journal`. A rerun keeps the finished shards of the same build,
continues after them and removes leftovers; a rerun with other settings or changed sources refuses
and says what changed, unless `overwrite=True` (delete this part's shards, rebuild cleanly).

Array jobs: `part=i, parts=n` builds the i-th of n contiguous scene groups of the person into
its own range of shard indices; `a2p data merge` joins the parts' records into the manifest.

Test hook: with `A2P_BUILD_FAIL_AFTER_SHARDS=k` in the environment, the build crashes while
writing the shard after its k-th finished one, leaving that shard's temp file behind; with
`k:kill` it sends itself SIGKILL there instead, dying with no clean-up at all.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from a2p.constants import FEATURE_RATE_HZ, SAMPLES_PER_FEATURE, SAMPLES_PER_FRAME
from a2p.data.format import (
    DEFAULT_HOP_FRAMES,
    DEFAULT_MAX_SHARD_BYTES,
    DEFAULT_WINDOW_FRAMES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
)
from a2p.data.person_stats import STATS_FILENAME, load_person_stats, person_stats_path
from a2p.errors import DataError
from a2p.fileio import file_sha256
from a2p.version import __version__
from data_tools.encode import (
    EncodeJob,
    SceneSummary,
    encode_scene,
    featurizer_info,
    init_worker,
    summarize_scene,
)
from data_tools.journal import (
    BuildIdentity,
    PartRecord,
    ResumeState,
    ShardWriter,
    part_index_range,
    part_record_path,
    remove_other_part_records,
)
from data_tools.stats import Moments
from data_tools.validate import SceneFiles, check_distinct_scenes, find_scenes, scene_splits

logger = logging.getLogger(__name__)

FAIL_AFTER_ENV = "A2P_BUILD_FAIL_AFTER_SHARDS"
FAIL_BY_KILL = ":kill"
FEATURE_ALIGN_FRAMES = SAMPLES_PER_FEATURE // math.gcd(SAMPLES_PER_FRAME, SAMPLES_PER_FEATURE)
"""Motion frames spanning a whole number of feature frames (3): with features, windows start on this grid."""
IN_FLIGHT_PER_WORKER = 2
"""Scenes encoded ahead per worker: enough to keep workers busy, few enough to bound memory."""

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BuildSettings:
    """Everything besides the sources that decides the bytes of the shards."""

    person: str
    window_frames: int = DEFAULT_WINDOW_FRAMES
    hop_frames: int = DEFAULT_HOP_FRAMES
    features: str | None = None
    """Featurizer fingerprint (`name:version[:weights digest]`), or None."""
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    part: int = 0
    parts: int = 1
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__


def build(
    src: str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    window_frames: int = DEFAULT_WINDOW_FRAMES,
    hop_frames: int = DEFAULT_HOP_FRAMES,
    features: str | None = None,
    features_weights: str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    part: int = 0,
    parts: int = 1,
    overwrite: bool = False,
) -> Manifest | None:
    """Build (or finish building) the shards of the person folder `src` into `out`.

    Returns the manifest, or None when `parts > 1` (run `merge_parts` once every part is done).
    """
    src, out = Path(src), Path(out)
    person = src.name  # the person id is the folder's name, compared exactly
    if not 0 < hop_frames <= window_frames:
        raise DataError(f"need 0 < hop <= window, got window {window_frames} and hop {hop_frames} frames")
    if not 0 <= part < parts:
        raise DataError(f"--part {part} is not in [0, --parts {parts})")
    if max_shard_bytes <= 0:
        raise DataError(f"the shard size bound must be positive, got {max_shard_bytes} bytes")
    index_range = part_index_range(part, parts)
    features_info = featurizer_info(features, features_weights) if features else None
    if features_info is not None and hop_frames % FEATURE_ALIGN_FRAMES:
        raise DataError(
            f"with --features the hop must be a multiple of {FEATURE_ALIGN_FRAMES} frames, so every "
            f"window starts on a {FEATURE_RATE_HZ} Hz feature frame (got {hop_frames})"
        )
    settings = BuildSettings(
        person,
        window_frames,
        hop_frames,
        features_info["fingerprint"] if features_info else None,
        max_shard_bytes,
        part,
        parts,
    )

    person_units = read_person_units(src)
    all_scenes = find_scenes(src)
    scene_split = dict(zip((s.name for s in all_scenes), scene_splits(len(all_scenes))))
    # Part i of n takes the i-th of n contiguous runs of scenes.
    scenes = [s for i, s in enumerate(all_scenes) if i * parts // len(all_scenes) == part]
    if not scenes:
        logger.warning("part %d of %d has no scenes (%s has %d)", part, parts, person, len(all_scenes))

    with _worker_pool(workers) as pool:
        summaries = _validate_all(scenes, person, scene_split, pool, workers)
        checksums = {name: digest for s in summaries for name, digest in s.checksums.items()}
        # over every scene of the person, so a part also sees copies of its scenes in other parts
        check_distinct_scenes(all_scenes, checksums, scene_split)
        identity = BuildIdentity(
            params={
                **asdict(settings),
                "scenes": {s.name: scene_split[s.name] for s in scenes},
                "num_scenes": len(all_scenes),
            },
            sources={**checksums, **person_units_checksum(src, person_units)},
        )
        out.mkdir(parents=True, exist_ok=True)
        state = ResumeState.scan(out, index_range, identity, overwrite)
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # stale until this build (and the merge) finish
        part_record_path(out, part, parts).unlink(missing_ok=True)
        remove_other_part_records(out, parts)

        jobs = [
            EncodeJob(
                files,
                person,
                scene_split[files.name],
                summary.frames,
                window_frames,
                hop_frames,
                summary.checksums,
                features,
                features_weights,
            )
            for files, summary in zip(scenes, summaries)
        ]
        plans: dict[str, list[str]] = {}
        for job in jobs:
            plans.setdefault(job.split, []).extend(job.keys)
        done = {key for keys in state.finished_prefixes(plans).values() for key in keys}
        for job in jobs:
            job.skip_windows = sum(key in done for key in job.keys)
        shards = _pack_shards(out, jobs, state, index_range, settings, identity, pool, workers)
    state.remove_leftovers(keep={entry["name"] for entries in shards.values() for entry in entries})

    record = _part_record(settings, identity, summaries, scene_split, shards, features_info)
    record.person_stats = person_units
    record.save(part_record_path(out, part, parts))
    logger.info(
        "%s part %d of %d done: %s; units: the train split's%s",
        person,
        part,
        parts,
        ", ".join(f"{split} {len(info['shards'])} shards" for split, info in record.splits.items()),
        f" and the person's {STATS_FILENAME}" if person_units else f" only (no {STATS_FILENAME} in {src})",
    )
    if parts > 1:
        logger.info("when every part is done, run `a2p data merge %s`", out)
        return None
    from data_tools.merge import merge_parts

    return merge_parts(out)


def read_person_units(folder: Path) -> dict[str, list[float]] | None:
    """The folder's data_stats.pth as manifest lists (float64 kept exactly by JSON), or None.

    A file that is there but unreadable or malformed is refused by name, before anything is built.
    """
    path = person_stats_path(folder)
    return None if path is None else load_person_stats(path).to_lists()


def person_units_checksum(folder: Path, units: dict[str, list[float]] | None) -> dict[str, str]:
    """{data_stats.pth: sha256} when the folder has one, so a changed stats file is a changed source."""
    return {} if units is None else {STATS_FILENAME: file_sha256(folder / STATS_FILENAME)}


def _part_record(
    settings: BuildSettings,
    identity: BuildIdentity,
    summaries: list[SceneSummary],
    scene_split: dict[str, str],
    shards: dict[str, list[dict[str, Any]]],
    features_info: dict[str, Any] | None,
) -> PartRecord:
    train = [s for s in summaries if scene_split[s.name] == "train"]
    splits = {}
    for split in dict.fromkeys(scene_split.values()):
        mine = [s for s in summaries if scene_split[s.name] == split]
        entries = shards.get(split, [])
        splits[split] = {
            "shards": entries,
            "scenes": [s.name for s in mine],
            "samples": sum(entry["samples"] for entry in entries),
            "frames": sum(s.frames for s in mine),
        }
    return PartRecord(
        person=settings.person,
        part=settings.part,
        parts=settings.parts,
        fingerprint=identity.fingerprint,
        params=identity.params,
        splits=splits,
        body=_combine([s.body for s in train]),
        face=_combine([s.face for s in train]),
        sources=identity.sources,
        features=features_info,
        tool_version=settings.tool_version,
    )


def _combine(moments: list[Moments | None]) -> Moments | None:
    total = None
    for m in moments:
        if m is not None:
            total = m if total is None else total.combine(m)
    return total


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """Processes over scenes for both steps (None: work in this process)."""
    if workers <= 1:
        yield None
        return
    # spawn: workers never inherit a parent's torch thread pools or locks mid-use
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker) as pool:
        yield pool


def _ordered_map(
    fn: Callable[[Item], Result], items: list[Item], pool: concurrent.futures.Executor | None, workers: int
) -> Iterator[Result]:
    """`map(fn, items)` in order, on `pool`, with at most a few items per worker in flight (bounded memory)."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque[concurrent.futures.Future[Result]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _validate_all(
    scenes: list[SceneFiles],
    person: str,
    scene_split: dict[str, str],
    pool: concurrent.futures.Executor | None,
    workers: int,
) -> list[SceneSummary]:
    """Step 1: read and check every scene; every bad file is reported, in one error."""
    jobs = [(files, person, scene_split[files.name] == "train") for files in scenes]
    summaries, problems = [], []
    with tqdm(total=len(jobs), desc=f"validate {person}", unit="scene", disable=None) as progress:
        for result in _ordered_map(summarize_scene, jobs, pool, workers):
            if isinstance(result, DataError):
                problems.append(str(result))
            else:
                summaries.append(result)
            progress.update()
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError("\n  ".join([f"{len(problems)} bad scenes:", *problems]))
    return summaries


def _injected_failure(hook: str, shard: str) -> None:
    """The test hook's crash: an exception, or (`k:kill`) an abrupt SIGKILL of this process."""
    if hook.endswith(FAIL_BY_KILL):
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"{FAIL_AFTER_ENV}={hook}: injected failure in {shard}")


def _pack_shards(
    out: Path,
    jobs: list[EncodeJob],
    state: ResumeState,
    index_range: range,
    settings: BuildSettings,
    identity: BuildIdentity,
    pool: concurrent.futures.Executor | None,
    workers: int,
) -> dict[str, list[dict[str, Any]]]:
    """Step 2: encode the windows finished shards do not hold, and pack them in order into new shards.

    Returns split -> manifest entries of all its shards (kept and new), in order.
    """
    shards = {split: state.kept_shards(split) for split in dict.fromkeys(job.split for job in jobs)}
    fail_hook = os.environ.get(FAIL_AFTER_ENV, "")
    fail_after = int(fail_hook.removesuffix(FAIL_BY_KILL)) if fail_hook else None
    finished_here = 0
    writer: ShardWriter | None = None
    todo = [job for job in jobs if job.skip_windows < len(job.keys)]
    progress = tqdm(
        total=sum(len(job.keys) for job in jobs),
        initial=sum(job.skip_windows for job in jobs),
        desc=f"shards {settings.person}",
        unit="window",
        disable=None,
    )
    try:
        with progress:
            for job, samples in zip(todo, _ordered_map(encode_scene, todo, pool, workers)):
                for sample in samples:
                    if writer is not None and (
                        writer.split != job.split or writer.would_overflow(sample, settings.max_shard_bytes)
                    ):
                        shards[writer.split].append(writer.finish(identity))
                        writer, finished_here = None, finished_here + 1
                    if writer is None:
                        index = index_range.start + len(shards[job.split])
                        if index not in index_range:
                            raise DataError(
                                f"{out}: a part may write at most {len(index_range)} shards per split"
                            )
                        writer = ShardWriter(out, job.split, index)
                    writer.add(sample)
                    if fail_after is not None and finished_here >= fail_after:
                        _injected_failure(fail_hook, writer.name)
                    progress.update()
            if writer is not None:
                shards[writer.split].append(writer.finish(identity))
                writer = None
    finally:
        if writer is not None:
            writer.abandon()
    return shards
