"""`a2p eval`: the paper's metrics of `a2p sample --data ... --split test` outputs against the split.

The ground truth is read from the shards in the same fixed chunks the sampler used
(`a2p.data.chunks`), unnormalized, like the sampled motion. Every chunk's output must exist. Face
metrics count only the frames whose captured face code is present (captures lose the face now
and then; frame differences count where both frames are present); the report gives the frames.
Beside a2p's per-repetition mean ± spread it holds the reference's pooled FD_g, FD_k and Div_g
(`pooled_fd_g`, `pooled_fd_k`, `pooled_div_g`: every repetition in one Gaussian, as its utils/eval.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from a2p.data.chunks import EVAL_CHUNK_FRAMES, iter_split_chunks
from a2p.errors import DataError
from a2p.evaluation.metrics import Metric, motion_metrics
from a2p.fileio import write_atomic

PARTS = ("body", "face")
REPORTED = ("fd_g", "fd_k", "div_g", "div_k")
POOLED = ("pooled_fd_g", "pooled_fd_k", "pooled_div_g")
"""The reference's numbers: all repetitions in one Gaussian (`a2p.evaluation.metrics.pooled_metrics`)."""


def load_split_results(
    shard_dir: str | Path, results: str | Path, split: str = "test", chunk: int = EVAL_CHUNK_FRAMES
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """part -> (predictions (R, C, T, D), ground truth (C, T, D), valid frames (C, T)) of the split's chunks."""
    results = Path(results)
    pred: dict[str, list[np.ndarray]] = {part: [] for part in PARTS}
    real: dict[str, list[np.ndarray]] = {part: [] for part in PARTS}
    valid: dict[str, list[np.ndarray]] = {part: [] for part in PARTS}
    missing, reps_seen = [], set()
    for name, _first, batch in iter_split_chunks(shard_dir, split, chunk, audio=False):
        path = results / f"{name}.npz"
        if not path.is_file():
            missing.append(name)
            continue
        try:
            with np.load(path) as out:
                sampled = {part: np.asarray(out[part], dtype=np.float64) for part in PARTS}
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path}: not a readable a2p sample output ({err})") from err
        for part in PARTS:
            if sampled[part].ndim != 3 or sampled[part].shape[1] != chunk:
                raise DataError(
                    f"{path}: {part} has shape {sampled[part].shape}, expected (reps, {chunk}, D)"
                )
        reps_seen.add(sampled["body"].shape[0])
        for part, mask_key in (("body", "mask"), ("face", "face_mask")):
            pred[part].append(sampled[part])
            real[part].append(batch[part][0].double().numpy())
            valid[part].append(batch[mask_key][0].numpy())
    if missing:
        raise DataError(
            f"{results}: {len(missing)} chunk(s) of the {split} split have no output, e.g. {missing[:3]}; "
            f"sample them with `a2p sample --data {shard_dir} --split {split} --out {results} ...`"
        )
    if not pred["body"]:
        raise DataError(f"{shard_dir}: the {split} split has no whole {chunk}-frame chunk to evaluate")
    if len(reps_seen) != 1:
        raise DataError(f"{results}: outputs hold different numbers of repetitions {sorted(reps_seen)}")
    return {
        part: (np.stack(pred[part], axis=1), np.stack(real[part]), np.stack(valid[part])) for part in PARTS
    }


def evaluate(
    shard_dir: str | Path, results: str | Path, split: str = "test", seed: int = 0
) -> dict[str, Any]:
    """The metrics of every part: {part: {metric: {mean, spread, values} | number}}, as JSON-ready dicts."""
    report: dict[str, Any] = {"split": split, "data": str(shard_dir), "results": str(results)}
    for part, (pred, gt, valid) in load_split_results(shard_dir, results, split).items():
        try:
            metrics = motion_metrics(pred, gt, seed=seed, mask=None if valid.all() else valid)
        except DataError as err:
            raise DataError(f"{part} of {results}: {err}") from err
        report[part] = {
            name: ({"mean": v.mean, "spread": v.spread, "values": v.values} if isinstance(v, Metric) else v)
            for name, v in metrics.items()
        }
        report[part]["chunks"] = int(gt.shape[0])
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """A markdown table: one row per metric, one column per part, mean ± spread over repetitions.

    The rows `pooled_*` below them are the reference's pooled values of the same metrics.
    """
    parts = [part for part in PARTS if part in report]
    lines = ["| metric | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
    for name in REPORTED:
        cells = [f"{report[p][name]['mean']:.4g} ± {report[p][name]['spread']:.2g}" for p in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in (*POOLED, "gt_div_g", "gt_div_k", "var_reps", "repetitions", "chunks", "frames"):
        cells = ["-" if report[p][name] is None else f"{report[p][name]:.4g}" for p in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """The report as JSON, written to a temporary name and renamed."""
    write_atomic(path, lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
