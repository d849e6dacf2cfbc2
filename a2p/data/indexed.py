"""Random access to a split's windows through webdataset's indexed reader (`wids`).

`a2p data build` writes `{split}.wids.json` beside the shards: a wids shard-list descriptor
(`shardlist` of `{url, nsamples, filesize}`, URLs relative to the descriptor), so any wids tool
reads the split as one indexable dataset. `IndexedSplit` opens it with wids' `ShardListDataset`:
window i of the split is sample i of its shards in manifest order. wids indexes a tar when it
opens it (memory-mapped, headers only) and keeps at most `open_shards` shards open (an LRU), so a
reader's memory does not grow with the dataset. A shard folder without descriptors (built before
them) is read from its manifest's shard list the same way, and so is a remote folder
(`a2p.data.remote`), whose shards wids opens from their copies in the local cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from a2p.data.decode import RawSample
from a2p.data.format import Manifest
from a2p.errors import DataError

logger = logging.getLogger(__name__)

DESCRIPTOR_SUFFIX = ".wids.json"
"""`{split}.wids.json`: the split's wids descriptor beside its shards."""


def descriptor_name(split: str) -> str:
    return f"{split}{DESCRIPTOR_SUFFIX}"


def write_descriptors(manifest: Manifest, shard_dir: str | Path) -> list[Path]:
    """Write every split's wids descriptor (atomically: temp name, then rename)."""
    written = []
    for split, info in manifest.splits.items():
        if not info.shards:
            continue
        descriptor = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": f"{manifest.person}-{split}",
            "shardlist": [{"url": s.name, "nsamples": s.samples, "filesize": s.bytes} for s in info.shards],
        }
        path = Path(shard_dir) / descriptor_name(split)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(descriptor, indent=1) + "\n")
        tmp.replace(path)
        written.append(path)
    return written


class IndexedSplit:
    """Window i of a split, read on demand (see the module doc); opened lazily, so it pickles to workers."""

    def __init__(
        self,
        shard_dir: str | Path,
        split: str,
        shards: list[tuple[str, int, int]],
        open_shards: int,
        localname: Callable[[str], str] | None = None,
    ) -> None:
        self.shard_dir, self.split = Path(shard_dir), split
        self.shards = shards  # (path or URL, samples, bytes) in manifest order
        self.open_shards = max(1, int(open_shards))
        self.localname = localname  # URL -> local copy (`a2p.data.remote.ShardCache`); None: local files
        self._dataset: Any = None

    def __len__(self) -> int:
        return sum(samples for _, samples, _ in self.shards)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}  # each process opens its own shards

    def _open(self) -> Any:
        import wids

        descriptor = self.shard_dir / descriptor_name(self.split)
        if self.localname is None and descriptor.is_file():
            source: Any = str(descriptor)
            listed = [s["url"] for s in json.loads(descriptor.read_text())["shardlist"]]
            if listed != [Path(path).name for path, _, _ in self.shards]:
                raise DataError(
                    f"{descriptor}: lists other shards than the manifest; rebuild with `a2p data build`"
                )
        else:
            source = [
                {"url": path, "nsamples": samples, "filesize": size} for path, samples, size in self.shards
            ]
        with contextlib.redirect_stderr(io.StringIO()):  # wids prints a summary line on every open
            return wids.ShardListDataset(
                source,
                lru_size=self.open_shards,
                localname=self.localname or _local,
                transformations=[],
                keep=True,
            )

    def __getitem__(self, window: int) -> RawSample:
        if self._dataset is None:
            self._dataset = self._open()
        try:
            sample = self._dataset[window]
        except (OSError, ValueError, AssertionError, KeyError, IndexError) as err:
            url = self._url_of(window)
            raise DataError(f"{url}: cannot read window {window} of split {self.split!r} ({err})") from err
        raw: RawSample = {
            name[1:]: value.getvalue() for name, value in sample.items() if name.startswith(".")
        }
        raw["__key__"] = sample["__key__"]
        raw["__url__"] = sample["__shard__"]
        return raw

    def _url_of(self, window: int) -> str:
        for path, samples, _ in self.shards:
            if window < samples:
                return path
            window -= samples
        return str(self.shard_dir)


def _local(url: str) -> str:
    """Local shards are read where they are (wids would copy them into its cache otherwise)."""
    return url
