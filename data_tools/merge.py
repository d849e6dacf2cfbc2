"""Join the part records of a (possibly array-job) build into one `manifest.json` (`a2p data merge`).

Every part must be present, built with the same settings from the same person folder; the
normalization stats combine the parts' train moments exactly (data_tools.stats).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from a2p.constants import SPLITS
from a2p.data.format import (
    MANIFEST_NAME,
    SHARD_PATTERN,
    Manifest,
    ShardInfo,
    SplitInfo,
    frames_to_hours,
    save_manifest,
)
from a2p.data.indexed import write_descriptors
from a2p.errors import DataError
from data_tools.journal import PARTS_DIR, PartRecord, part_record_path
from data_tools.stats import Moments

logger = logging.getLogger(__name__)

PER_PART_PARAMS = ("part", "scenes")
"""Build settings that differ between the parts of one build; all others must agree."""


def load_parts(shard_dir: Path) -> list[PartRecord]:
    """The part records of one complete build, in part order; errors name what is missing or inconsistent."""
    paths = sorted((shard_dir / PARTS_DIR).glob("part-*-of-*.json"))
    if not paths:
        raise DataError(f"{shard_dir}: no finished build parts here (run `a2p data build` first)")
    records = []
    for path in paths:
        try:
            records.append(PartRecord.load(path))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: unreadable part record ({err})") from err
    counts = sorted({r.parts for r in records})
    if len(counts) > 1:
        raise DataError(
            f"{shard_dir / PARTS_DIR}: holds parts of builds split {counts} ways; "
            "rebuild with one --parts value (or delete the stale records)"
        )
    parts = counts[0]
    have = {r.part for r in records}
    missing = [str(part_record_path(shard_dir, i, parts)) for i in range(parts) if i not in have]
    if missing:
        raise DataError(
            f"{shard_dir}: {len(missing)} of {parts} build parts have not finished: {', '.join(missing)}"
        )
    records.sort(key=lambda r: r.part)
    first = records[0]
    shared = {k: v for k, v in first.params.items() if k not in PER_PART_PARAMS}
    for record in records[1:]:
        other = {k: v for k, v in record.params.items() if k not in PER_PART_PARAMS}
        if other != shared or record.features != first.features:
            diff = [
                f"{k}: {shared.get(k)!r} vs {other.get(k)!r}" for k in shared if shared.get(k) != other.get(k)
            ]
            raise DataError(
                f"{part_record_path(shard_dir, record.part, parts)}: built with other settings than part 0 "
                f"({'; '.join(diff) or 'features differ'})"
            )
    return records


def _combined(moments: list[Moments | None], what: str, shard_dir: Path) -> Moments:
    total: Moments | None = None
    for m in moments:
        if m is not None:
            total = m if total is None else total.combine(m)
    if total is None or total.count == 0:
        raise DataError(f"{shard_dir}: the train split has no {what}, so it has no normalization stats")
    return total


def _person_stats(records: list[PartRecord], shard_dir: Path) -> dict[str, list[float]] | None:
    """The data_stats.pth every part read (they read the same folder), or None."""
    first = records[0].person_stats
    for record in records[1:]:
        if record.person_stats != first:
            raise DataError(
                f"{part_record_path(shard_dir, record.part, record.parts)}: read another data_stats.pth than part 0"
            )
    return first


def merge_parts(shard_dir: str | Path) -> Manifest:
    """Write `shard_dir/manifest.json` from its part records; returns the manifest."""
    shard_dir = Path(shard_dir)
    records = load_parts(shard_dir)
    splits: dict[str, SplitInfo] = {}
    for split in SPLITS:
        info = SplitInfo()
        for record in records:
            part_split: dict[str, Any] = record.splits.get(split, {})
            info.shards.extend(ShardInfo(**shard) for shard in part_split.get("shards", []))
            info.scenes.extend(part_split.get("scenes", []))
            info.samples += part_split.get("samples", 0)
            info.frames += part_split.get("frames", 0)
        info.hours = frames_to_hours(info.frames)
        splits[split] = info
    listed = {shard.name for info in splits.values() for shard in info.shards}
    absent = sorted(name for name in listed if not (shard_dir / name).is_file())
    if absent:
        raise DataError(f"{shard_dir}: shards listed by the build parts are missing: {', '.join(absent)}")
    strays = sorted(
        p.name for p in shard_dir.glob("*.tar") if SHARD_PATTERN.match(p.name) and p.name not in listed
    )
    if strays:
        logger.warning("%s: shards no part lists (from an older build?): %s", shard_dir, ", ".join(strays))

    body = _combined([r.body for r in records], "body frames", shard_dir)
    face = _combined([r.face for r in records], "valid face frames", shard_dir)
    first = records[0]
    manifest = Manifest(
        person=first.person,
        splits=splits,
        stats={
            "body_mean": body.mean.tolist(),
            "body_std": body.std().tolist(),
            "face_mean": face.mean.tolist(),
            "face_std": face.std().tolist(),
        },
        window_frames=first.params["window_frames"],
        hop_frames=first.params["hop_frames"],
        features=first.features,
        person_stats=_person_stats(records, shard_dir),
        sources=dict(sorted({k: v for r in records for k, v in r.sources.items()}.items())),
        tool_version=first.tool_version,
    )
    write_descriptors(manifest, shard_dir)  # before the manifest, which marks a finished build
    save_manifest(manifest, shard_dir)
    logger.info(
        "wrote %s: %s",
        shard_dir / MANIFEST_NAME,
        ", ".join(f"{name} {len(s.shards)} shards {s.samples} windows" for name, s in splits.items()),
    )
    return manifest
