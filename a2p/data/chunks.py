"""The fixed evaluation chunks of a split: what `a2p sample --data` samples and `a2p eval` scores.

The reference evaluates the test split in 600-frame chunks. Shards hold overlapping windows of
every scene, so chunks are cut from each window in order and a chunk is kept when it is whole
and starts at or after the end of its scene's last kept chunk: every frame is scored at most once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from a2p.constants import CROP_MAX_FRAMES
from a2p.errors import DataError

EVAL_CHUNK_FRAMES = CROP_MAX_FRAMES
"""Frames per evaluation chunk (the reference's 600)."""


def iter_split_chunks(
    shard_dir: str | Path, split: str, chunk: int = EVAL_CHUNK_FRAMES, audio: bool = True
) -> Iterator[tuple[str, int, dict]]:
    """(name, first frame in the scene, one-row batch) of every whole, non-repeating chunk of `split`."""
    from a2p.data.eval_loader import build_eval_loader

    loader = build_eval_loader(
        shard_dir, 1, split=split, rank=0, world_size=1, crop_frames=chunk, audio=audio,
        features=False, normalize=False, pad_ranks=False,
    )  # fmt: skip
    covered: dict[str, int] = {}
    longest = 0
    for batch in loader:
        longest = max(longest, int(batch["length"][0]))
        if int(batch["length"][0]) < chunk:
            continue
        scene, window_start = str(batch["key"][0]).rsplit("_", 1)
        first = int(window_start) + int(batch["start"][0])
        if first < covered.get(scene, 0):
            continue
        covered[scene] = first + chunk
        yield f"{scene}_{first:06d}", first, batch
    if not covered:
        raise DataError(
            f"{shard_dir}: split {split!r} has no whole {chunk}-frame chunk to evaluate on "
            f"(its longest window holds {longest} frames); build it from longer scenes"
        )
