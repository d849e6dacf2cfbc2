"""`a2p bench data`: training-loader throughput per worker and resident memory against dataset size,
and rank 0's throughput at simulated world sizes with the check that the global order holds.

With `--data SHARDS/PERSON` it measures that folder's training split. Without it, it writes
synthetic shards of two sizes (`--windows` windows and `--scale` times as many: 40 s windows of
noise-like 16-bit FLAC audio, random poses and face codes, as `a2p data build` lays them out) into
a temporary folder and measures both, to show that memory does not grow with the data.

For each dataset and worker count, in a fresh process, it iterates `--batches` batches of `--batch-size` training crops
(600 frames + 16 s of stereo audio each) and reports: time to the first batch (worker start-up and
the first shards' indexing), samples/s after it, samples/s per worker, and the resident memory of the
main process plus its DataLoader workers from /proc: peaks sampled every 250 ms of summed RSS
(counts pages shared between the forked processes once per process) and summed PSS (shares them
out; sums to the true footprint), and summed PSS after each quarter of the batches (memory over
time: flat while the readers open and close shards).

Then, for each of `--world-sizes` (1, 8, 64) at one global micro-batch (`--global-batch`, 64), it
times rank 0's loader in this process (samples/s per rank), and reads the first two global
micro-batches as all W ranks read them (every rank simulated in this process) to check that they
are the same samples and crops as one rank's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from a2p.constants import FACE_DIM, FPS, POSE_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME
from a2p.data.format import (
    AUDIO_KEY,
    BODY_KEY,
    DEFAULT_WINDOW_FRAMES,
    FACE_KEY,
    FACE_VALID_KEY,
    META_KEY,
    Manifest,
    ShardInfo,
    SplitInfo,
    frames_to_hours,
    load_manifest,
    sample_key,
    save_manifest,
    shard_name,
)
from a2p.data.pipeline import DEFAULT_OPEN_SHARDS, build_train_loader


@dataclass
class Result:
    """One measured configuration."""

    data: str
    windows: int
    shards: int
    gigabytes: float
    workers: int
    batch_size: int
    batches: int
    first_batch_s: float
    samples_per_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    pss_over_time_mb: list[float]
    """Summed PSS after 1/4, 2/4, 3/4 and all of the batches."""

    @property
    def per_worker(self) -> float:
        return self.samples_per_s / max(1, self.workers)


class MemorySampler:
    """Peak summed RSS and PSS (MB) of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_rss = 0.0
        self.peak_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> tuple[float, float]:
        """Summed RSS and PSS (MB) now, folded into the peaks."""
        rss = pss = 0.0
        for pid in [os.getpid(), *_children(os.getpid())]:
            rss += _proc_kb(f"/proc/{pid}/status", "VmRSS:")
            pss += _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
        self.peak_rss = max(self.peak_rss, rss / 1024)
        self.peak_pss = max(self.peak_pss, pss / 1024)
        return rss / 1024, pss / 1024


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _proc_kb(path: str, field: str) -> float:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


def write_synthetic_shards(root: Path, windows: int, per_shard: int, seed: int = 0) -> Manifest:
    """`windows` 40 s windows (one scene each) of synthetic data in shards of `per_shard`, plus a manifest."""
    import soundfile as sf
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    frames = DEFAULT_WINDOW_FRAMES
    info = SplitInfo(samples=windows, frames=windows * frames, hours=frames_to_hours(windows * frames))
    rng = np.random.default_rng(seed)
    # Noise shaped like speech loudness (syllable-rate envelope): compresses about as FLAC does real audio.
    envelope = np.abs(np.sin(np.linspace(0, 4.0 * np.pi * frames / FPS, frames * SAMPLES_PER_FRAME)))[:, None]
    for first in range(0, windows, per_shard):
        path = root / shard_name("train", first // per_shard)
        with wds.TarWriter(str(path)) as writer:
            for index in range(first, min(windows, first + per_shard)):
                scene = f"scene{index:04d}"
                noise = rng.normal(scale=2000.0, size=(frames * SAMPLES_PER_FRAME, 2)) * envelope
                audio = io.BytesIO()
                sf.write(audio, noise.astype(np.int16), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                valid = rng.random(frames) > 0.05
                meta = {
                    "person": "BENCH",
                    "scene": scene,
                    "start": 0,
                    "frames": frames,
                    "scene_frames": frames,
                }
                writer.write(
                    {
                        "__key__": sample_key(scene, 0),
                        AUDIO_KEY: audio.getvalue(),
                        BODY_KEY: _npy(rng.normal(size=(frames, POSE_DIM)).astype(np.float32)),
                        FACE_KEY: _npy(
                            rng.normal(size=(frames, FACE_DIM)).astype(np.float32) * valid[:, None]
                        ),
                        FACE_VALID_KEY: _npy(valid),
                        META_KEY: json.dumps({**meta, "split": "train"}).encode(),
                    }
                )
        data = path.read_bytes()
        count = min(windows, first + per_shard) - first
        info.shards.append(
            ShardInfo(path.name, count, count * frames, len(data), hashlib.sha256(data).hexdigest())
        )
    stats = {
        "body_mean": [0.0] * POSE_DIM,
        "body_std": [1.0] * POSE_DIM,
        "face_mean": [0.0] * FACE_DIM,
        "face_std": [1.0] * FACE_DIM,
    }
    manifest = Manifest(person="BENCH", splits={"train": info}, stats=stats, tool_version="bench")
    save_manifest(manifest, root)
    return manifest


def measure(
    shard_dir: Path, label: str, workers: int, batch_size: int, batches: int, audio: bool, open_shards: int
) -> Result:
    """Iterate `batches` batches of the training loader (over epochs as needed) and time them."""
    manifest = load_manifest(shard_dir)
    split = manifest.split("train")
    # One epoch of exactly `batches` batches: steady state, without a worker restart per epoch.
    loader = build_train_loader(
        shard_dir,
        batch_size,
        seed=0,
        rank=0,
        world_size=1,
        num_workers=workers,
        audio=audio,
        batches_per_epoch=batches,
        open_shards=open_shards,
    )
    done = 0
    first = 0.0
    checkpoints = {max(1, batches * q // 4) for q in range(1, 5)}
    over_time: list[float] = []
    begin = time.perf_counter()
    with MemorySampler() as memory:
        for _ in loader:
            done += 1
            if done == 1:
                first = time.perf_counter() - begin
                begin = time.perf_counter()
            if done in checkpoints:
                over_time.append(memory.sample()[1])
        elapsed = time.perf_counter() - begin
    rate = (batches - 1) * batch_size / elapsed if batches > 1 and elapsed > 0 else float("nan")
    size = sum(s.bytes or (shard_dir / s.name).stat().st_size for s in split.shards)
    return Result(
        data=label,
        windows=split.samples,
        shards=len(split.shards),
        gigabytes=size / 1e9,
        workers=workers,
        batch_size=batch_size,
        batches=batches,
        first_batch_s=first,
        samples_per_s=rate,
        peak_rss_mb=memory.peak_rss,
        peak_pss_mb=memory.peak_pss,
        pss_over_time_mb=over_time,
    )


def measure_fresh(*args: object) -> Result:
    """`measure` in a fresh interpreter, so one measurement's heap does not count in the next one's."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:  # not daemonic: may fork
        return pool.submit(measure, *args).result()


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned text, the first column left-aligned and the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def render(results: list[Result], audio: bool, open_shards: int) -> str:
    header = ["data", "windows", "shards", "GB", "workers", "batch", "first s", "samples/s", "per worker",
              "RSS MB", "PSS MB", "PSS vs first", "PSS MB at 1/4 .. 4/4"]  # fmt: skip
    rows = []
    several = len({r.data for r in results}) > 1
    for r in results:
        base = next(b for b in results if b.workers == r.workers)
        rows.append(
            [
                r.data,
                str(r.windows),
                str(r.shards),
                f"{r.gigabytes:.2f}",
                str(r.workers),
                str(r.batch_size),
                f"{r.first_batch_s:.2f}",
                f"{r.samples_per_s:.1f}",
                f"{r.per_worker:.1f}",
                f"{r.peak_rss_mb:.0f}",
                f"{r.peak_pss_mb:.0f}",
                f"{r.peak_pss_mb / base.peak_pss_mb:.2f}x" if base.peak_pss_mb and several else "-",
                " ".join(f"{m:.0f}" for m in r.pss_over_time_mb),
            ]
        )
    crop = "600-frame crops" + (" with 16 s stereo audio" if audio else " without audio")
    lines = [
        f"a2p bench data: training loader, {crop}, {open_shards} open shards per reader, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs",
        "",
        *table(header, rows),
        "",
        "one loader epoch of the given batches per row (the global order continues across epochs);",
        "samples/s excludes the first batch; RSS and PSS are peaks of main + worker processes;",
        "PSS vs first: against the first dataset with the same workers (flat = memory independent of data size);",
        "PSS at 1/4 .. 4/4: summed PSS after each quarter of the batches (flat = no growth over time).",
    ]
    return "\n".join(lines)


def global_micro_batches(shard_dir: Path, world_size: int, global_batch: int, count: int) -> list[list]:
    """The first `count` global micro-batches as every simulated rank of `world_size` reads them:
    sorted (draw, key, crop start, length) over all ranks, waveforms not decoded."""
    rows: list[list] = [[] for _ in range(count)]
    for rank in range(world_size):
        loader = build_train_loader(
            shard_dir, global_batch // world_size, seed=0, rank=rank, world_size=world_size,
            audio=False, batches_per_epoch=count,
        )  # fmt: skip
        for index, batch in enumerate(loader):
            rows[index] += [
                (int(d), k, int(s), int(n))
                for d, k, s, n in zip(batch["draw"], batch["key"], batch["start"], batch["length"])
            ]
    return [sorted(batch) for batch in rows]


def world_size_report(
    shard_dir: Path, sizes: list[int], global_batch: int, batches: int, audio: bool, open_shards: int
) -> str:
    """Rank 0's samples/s at each simulated world size (the same global batch), and whether all
    ranks together read the same global order as one rank."""
    rows, reference = [], global_micro_batches(shard_dir, 1, global_batch, 2)
    for world_size in sizes:
        if global_batch % world_size:
            raise SystemExit(f"--global-batch {global_batch} is not a multiple of world size {world_size}")
        per_rank = global_batch // world_size
        timed = measure_rank(shard_dir, world_size, per_rank, batches, audio, open_shards)
        same = global_micro_batches(shard_dir, world_size, global_batch, 2) == reference
        rows.append([str(world_size), str(per_rank), f"{timed:.1f}", "yes" if same else "NO"])
    lines = [
        f"a2p bench data: rank 0 of W simulated ranks, global micro-batch {global_batch}, {shard_dir}",
        *table(["ranks W", "batch per rank", "rank 0 samples/s", "same global order as 1 rank"], rows),
        "samples/s excludes the first batch; the order check compares the first 2 global micro-batches",
        "(sample, crop start, length of every row of every rank) with one rank's.",
    ]
    return "\n".join(lines)


def measure_rank(
    shard_dir: Path, world_size: int, batch_size: int, batches: int, audio: bool, open_shards: int
) -> float:
    """Samples/s of rank 0 of `world_size` after its first batch, in this process (no workers)."""
    loader = build_train_loader(
        shard_dir, batch_size, seed=0, rank=0, world_size=world_size, audio=audio,
        batches_per_epoch=batches, open_shards=open_shards,
    )  # fmt: skip
    iterator = iter(loader)
    next(iterator)
    begin = time.perf_counter()
    done = sum(1 for _ in iterator)
    elapsed = time.perf_counter() - begin
    return done * batch_size / elapsed if elapsed > 0 else float("nan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p bench data", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, help="a person's shard folder (default: synthetic shards, 2 sizes)"
    )
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2], help="DataLoader worker counts to measure"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--batches", type=int, default=30, help="batches per measurement (the first is timed apart)"
    )
    parser.add_argument(
        "--open-shards", type=int, default=DEFAULT_OPEN_SHARDS, help="shards a reader keeps open"
    )
    parser.add_argument("--windows", type=int, default=40, help="synthetic: windows of the small dataset")
    parser.add_argument(
        "--scale", type=int, default=4, help="synthetic: the large dataset is this many times bigger"
    )
    parser.add_argument("--per-shard", type=int, default=2, help="synthetic: windows per shard")
    parser.add_argument("--no-audio", action="store_true", help="skip decoding the waveform")
    parser.add_argument("--keep", type=Path, help="synthetic: write the shards here and keep them")
    parser.add_argument(
        "--world-sizes", type=int, nargs="*", default=[1, 8, 64],
        help="simulated world sizes for rank 0's samples/s and the global-order check (none: skip)",
    )  # fmt: skip
    parser.add_argument("--global-batch", type=int, default=64, help="global micro-batch of those runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    audio = not args.no_audio
    results: list[Result] = []
    reports: list[str] = []
    if args.data is not None:
        if args.world_sizes:
            reports.append(
                world_size_report(
                    args.data, args.world_sizes, args.global_batch, args.batches, audio, args.open_shards
                )
            )
        for workers in args.workers:
            results.append(
                measure_fresh(
                    args.data,
                    str(args.data),
                    workers,
                    args.batch_size,
                    args.batches,
                    audio,
                    args.open_shards,
                )
            )
    else:
        top = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="a2p-bench-data-"))
        try:
            sizes = [("1x", args.windows), (f"{args.scale}x", args.windows * args.scale)]
            for label, windows in sizes:
                root = top / f"synthetic-{label}"
                if not (root / "manifest.json").is_file():
                    write_synthetic_shards(root, windows, args.per_shard)
            if args.world_sizes:
                reports.append(
                    world_size_report(
                        top / "synthetic-1x", args.world_sizes, args.global_batch, args.batches, audio,
                        args.open_shards,
                    )
                )  # fmt: skip
            for workers in args.workers:
                for label, _ in sizes:
                    root = top / f"synthetic-{label}"
                    results.append(
                        measure_fresh(
                            root,
                            f"synthetic {label}",
                            workers,
                            args.batch_size,
                            args.batches,
                            audio,
                            args.open_shards,
                        )
                    )
        finally:
            if not args.keep:
                shutil.rmtree(top, ignore_errors=True)
    print(render(results, audio, args.open_shards))
    for report in reports:
        print()
        print(report)
    return 0
