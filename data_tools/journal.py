"""How a build writes shards atomically, records them, and picks up after an interruption.

    SHARDS/PERSON/
      train-000000.tar ...            finished shards (a final name only once complete)
      .train-000001.tar.tmp           a shard being written (the next run deletes it)
      .build/train-000000.tar.json    journal of a finished shard: keys, size, sha256, fingerprint
      .parts/part-000-of-001.json     record of a finished part: its shards, scenes, stats moments
      manifest.json                   written last, by the build (one part) or `a2p data merge`

A shard is written under its temp name, fsynced, renamed, and only then journaled; so a shard
with a journal is complete, and a final name without a journal (a crash between the two) is
simply rebuilt. The fingerprint hashes the build settings and the sources' checksums: a rerun
keeps a journaled shard only when its fingerprint, size and sha256 still match.

Parts of an array build own disjoint ranges of shard indices (`part_index_range`), and a build
only ever looks at, writes or deletes shards in its own range.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from a2p.data.format import MANIFEST_NAME, SHARD_PATTERN, shard_name
from a2p.errors import DataError
from a2p.fileio import file_sha256
from data_tools.encode import EncodedSample
from data_tools.stats import Moments

logger = logging.getLogger(__name__)

BUILD_DIR = ".build"
PARTS_DIR = ".parts"
JOURNAL_SUFFIX = ".json"
TMP_SUFFIX = ".tmp"
TAR_END_BYTES = 2 * tarfile.BLOCKSIZE
"""The two zero blocks that end a tar."""
SHARD_INDEX_LIMIT = 1_000_000
"""Shard indices have six digits."""
PART_INDEX_STRIDE = 10_000
"""Shard indices each part of an array build owns (per split): part i starts at i * stride."""
MAX_PARTS = SHARD_INDEX_LIMIT // PART_INDEX_STRIDE
SHARD_ENTRY_FIELDS = ("name", "samples", "frames", "bytes", "sha256")
"""What a journal shares with the manifest's `ShardInfo`."""


def part_index_range(part: int, parts: int) -> range:
    """Shard indices (per split) that part `part` of `parts` writes; a lone part owns them all."""
    if parts == 1:
        return range(SHARD_INDEX_LIMIT)
    if parts > MAX_PARTS:
        raise DataError(f"an array build has at most {MAX_PARTS} parts per person, got {parts}")
    return range(part * PART_INDEX_STRIDE, (part + 1) * PART_INDEX_STRIDE)


def part_record_path(out: Path, part: int, parts: int) -> Path:
    return out / PARTS_DIR / f"part-{part:03d}-of-{parts:03d}.json"


def remove_other_part_records(out: Path, parts: int) -> None:
    """Delete the part records of earlier builds split into another number of parts than `parts`."""
    for path in (out / PARTS_DIR).glob("part-*-of-*.json"):
        if not path.name.endswith(f"-of-{parts:03d}.json"):
            logger.info("removing %s: a build in another number of parts", path)
            path.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@dataclass(frozen=True)
class BuildIdentity:
    """What makes two runs the same build: settings and source checksums, and their hash."""

    params: dict[str, Any]
    sources: dict[str, str]

    @property
    def fingerprint(self) -> str:
        text = json.dumps({"params": self.params, "sources": self.sources}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def difference(self, journal: dict[str, Any]) -> str:
        """What differs between the build that wrote `journal` and this one, in words."""
        old_params = journal.get("params") or {}
        changed = [
            f"{key} {old_params.get(key)!r} -> {value!r}"
            for key, value in self.params.items()
            if key != "scenes" and old_params.get(key) != value
        ]
        if old_params.get("scenes") != self.params.get("scenes"):
            changed.append("the scenes or their splits differ")
        old_sources = journal.get("sources") or {}
        edited = sorted(n for n, digest in self.sources.items() if old_sources.get(n) not in (None, digest))
        if edited:
            more = " ..." if len(edited) > 5 else ""
            changed.append(f"source files changed: {', '.join(edited[:5])}{more}")
        return "; ".join(changed) or "a different build fingerprint"


def _tar_file_bytes(member_bytes: int) -> int:
    """Size of a tar file whose members take `member_bytes`: tarfile ends it with two zero blocks
    and pads it to a whole record (`tarfile.RECORDSIZE`)."""
    return -(-(member_bytes + TAR_END_BYTES) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _HashingWriter:
    """The write end tarfile needs (`write`, `tell`), hashing and counting what passes through."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Writes one shard under a temp name; `finish` renames it into place and journals it."""

    def __init__(self, out: Path, split: str, index: int) -> None:
        self.name = shard_name(split, index)
        self.split = split
        self.path = out / self.name
        self.tmp = out / f".{self.name}{TMP_SUFFIX}"
        self.raw = self.tmp.open("wb")
        self.writer = _HashingWriter(self.raw)
        self.tar = tarfile.TarFile(fileobj=self.writer, mode="w", format=tarfile.PAX_FORMAT)
        self.keys: list[str] = []
        self.frames = 0
        self.member_bytes = 0
        """Bytes of the members written so far (headers and block-padded data)."""

    def add(self, sample: EncodedSample) -> None:
        for suffix, data in sample.files.items():
            info = tarfile.TarInfo(f"{sample.key}.{suffix}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # same bytes on every build
            self.tar.addfile(info, io.BytesIO(data))
        self.keys.append(sample.key)
        self.frames += sample.frames
        self.member_bytes += sample.tar_bytes

    @property
    def final_bytes(self) -> int:
        """The size of the finished file if it ended now: members, end blocks, padding to a whole record."""
        return _tar_file_bytes(self.member_bytes)

    def would_overflow(self, sample: EncodedSample, limit: int) -> bool:
        """True when adding `sample` would pass `limit` (a lone oversized sample still gets a shard)."""
        return bool(self.keys) and _tar_file_bytes(self.member_bytes + sample.tar_bytes) > limit

    def finish(self, identity: BuildIdentity) -> dict[str, Any]:
        """Close, fsync, rename into place, then journal; returns the shard's manifest entry."""
        self.tar.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        self.tmp.replace(self.path)
        entry = {
            "name": self.name,
            "samples": len(self.keys),
            "frames": self.frames,
            "bytes": self.writer.size,
            "sha256": self.writer.digest.hexdigest(),
        }
        journal = {
            **entry,
            "keys": self.keys,
            "fingerprint": identity.fingerprint,
            "params": identity.params,
            "sources": identity.sources,
        }
        write_json_atomic(self.path.parent / BUILD_DIR / f"{self.name}{JOURNAL_SUFFIX}", journal)
        return entry

    def abandon(self) -> None:
        """Close the temp file after a failure, without ending the tar; the next run deletes it."""
        self.raw.close()


def _owned(name: str, index_range: range) -> bool:
    match = SHARD_PATTERN.match(name)
    return match is not None and int(match.group(2)) in index_range


class ResumeState:
    """The finished shards an earlier run of the same build (and part) left, that this run keeps."""

    def __init__(self, out: Path, index_range: range, journals: dict[str, dict[str, Any]]) -> None:
        self.out = out
        self.index_range = index_range
        self.journals = journals
        """Shard name -> journal, for journaled shards whose file still matches."""

    @classmethod
    def scan(cls, out: Path, index_range: range, identity: BuildIdentity, overwrite: bool) -> ResumeState:
        """Read this part's journals; refuse (or with `overwrite`, delete) those of another build."""
        for tmp in out.glob(f".*{TMP_SUFFIX}"):
            if _owned(tmp.name[1 : -len(TMP_SUFFIX)], index_range):
                tmp.unlink()
        journals: dict[str, dict[str, Any]] = {}
        foreign = []
        for path in sorted((out / BUILD_DIR).glob(f"*{JOURNAL_SUFFIX}")):
            name = path.name[: -len(JOURNAL_SUFFIX)]
            if not _owned(name, index_range):
                continue
            try:
                journals[name] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                logger.warning("%s: unreadable journal, its shard will be rebuilt", path)
                path.unlink()
                continue
            if journals[name].get("fingerprint") != identity.fingerprint:
                foreign.append(identity.difference(journals[name]))
        if foreign and not overwrite:
            raise DataError(
                f"{out}: holds shards of an earlier build with other settings or sources ({foreign[0]}); "
                "refusing to mix them. Rerun with --overwrite to delete them and rebuild cleanly, "
                "or choose another --out"
            )
        if foreign:
            logger.warning("%s: deleting the shards of an earlier build (%s), rebuilding", out, foreign[0])
            cls(out, index_range, {}).remove_leftovers(keep=set())
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            journals = {}
        kept = {}
        for name, journal in journals.items():
            path = out / name
            intact = path.is_file() and path.stat().st_size == journal.get("bytes")
            if intact and file_sha256(path) == journal.get("sha256"):
                kept[name] = journal
            else:
                logger.warning("%s: does not match its journal, it will be rebuilt", path)
        return cls(out, index_range, kept)

    def finished_prefixes(self, plans: dict[str, list[str]]) -> dict[str, list[str]]:
        """Per split, the sample keys that kept shards hold (a prefix of the split's planned keys).

        Shards are written in order, so the finished ones are the first few of each split. A shard
        is kept only if it and every shard before it are finished and hold the planned keys.
        """
        done: dict[str, list[str]] = {}
        kept: dict[str, dict[str, Any]] = {}
        for split, plan in plans.items():
            keys: list[str] = []
            for index in self.index_range:
                journal = self.journals.get(shard_name(split, index))
                if journal is None or plan[len(keys) : len(keys) + len(journal["keys"])] != journal["keys"]:
                    break
                keys.extend(journal["keys"])
                kept[journal["name"]] = journal
            done[split] = keys
            if keys:
                logger.info("resuming %s: finished shards hold %d of %d windows", split, len(keys), len(plan))
        self.journals = kept
        return done

    def kept_shards(self, split: str) -> list[dict[str, Any]]:
        """Manifest entries of the shards of `split` this run keeps, in order."""
        entries = []
        for index in self.index_range:
            journal = self.journals.get(shard_name(split, index))
            if journal is None:
                break
            entries.append({k: journal[k] for k in SHARD_ENTRY_FIELDS})
        return entries

    def remove_leftovers(self, keep: set[str]) -> None:
        """Delete this part's shards and journals that are not in `keep`."""
        for shard in self.out.glob("*.tar"):
            if _owned(shard.name, self.index_range) and shard.name not in keep:
                logger.info("removing %s", shard)
                shard.unlink()
        for journal in (self.out / BUILD_DIR).glob(f"*{JOURNAL_SUFFIX}"):
            name = journal.name[: -len(JOURNAL_SUFFIX)]
            if _owned(name, self.index_range) and name not in keep:
                journal.unlink()


@dataclass
class PartRecord:
    """What one finished part of a build contributes to the manifest (`.parts/part-III-of-NNN.json`)."""

    person: str
    part: int
    parts: int
    fingerprint: str
    """sha256 of the build settings and this part's source checksums."""
    params: dict[str, Any]
    """The build settings (window, hop, features, shard bound, part, parts, versions, scenes)."""
    splits: dict[str, dict[str, Any]]
    """split -> {shards: [ShardInfo fields], scenes, samples, frames} for this part's scenes."""
    body: Moments | None
    """Moments of the body poses of this part's train scenes (None if it has none)."""
    face: Moments | None
    """Moments of the valid face codes of this part's train scenes."""
    sources: dict[str, str] = field(default_factory=dict)
    features: dict[str, Any] | None = None
    person_stats: dict[str, list[float]] | None = None
    """The person folder's data_stats.pth (`Manifest.person_stats`), when it has one."""
    tool_version: str = ""

    def save(self, path: Path) -> None:
        data = {k: v for k, v in self.__dict__.items() if k not in ("body", "face")}
        data["body"] = self.body.to_json() if self.body else None
        data["face"] = self.face.to_json() if self.face else None
        write_json_atomic(path, data)

    @classmethod
    def load(cls, path: Path) -> PartRecord:
        data = json.loads(path.read_text())
        for key in ("body", "face"):
            data[key] = Moments.from_json(data[key]) if data.get(key) else None
        return cls(**data)
