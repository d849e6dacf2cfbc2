"""The training loader: one global order on any ranks x workers, fixed epoch length, exact resume, errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from loader_shards import write_shards

from a2p.data import TrainStream, build_eval_loader, build_train_loader
from a2p.data.format import load_manifest, save_manifest
from a2p.errors import DataError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """16 windows in 8 shards of 2 (8 scenes of 1300 frames: windows at 0 and 600)."""
    root = tmp_path_factory.mktemp("loader") / "TXB805"
    write_shards(root, {"train": [1300] * 8, "val": [700]})
    return root


def signature(batch: dict) -> list[tuple[str, int, int]]:
    return [(k, int(s), int(n)) for k, s, n in zip(batch["key"], batch["start"], batch["length"])]


def epoch_items(
    root, rank: int, world_size: int, workers: int, seed: int = 0, epoch: int = 0, **kw
) -> list[list]:
    loader = build_train_loader(
        root, 2, seed=seed, rank=rank, world_size=world_size, num_workers=workers, audio=False, **kw
    )
    loader.set_epoch(epoch)
    return [signature(batch) for batch in loader]


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


def test_two_ranks_two_workers_see_disjoint_equal_batches(shards):
    per_rank = [epoch_items(shards, rank, 2, 2) for rank in range(2)]
    assert [len(batches) for batches in per_rank] == [4, 4]  # 16 samples / (2 ranks x batch 2)
    keys = [key for batches in per_rank for batch in batches for key, _, _ in batch]
    assert len(keys) == 16 and len(set(keys)) == 16  # disjoint, and one pass over the data
    crops = {(key, start) for batches in per_rank for batch in batches for key, start, _ in batch}
    assert len(crops) == 16


def global_batches(root, world_size: int, workers: int, micro: int = 12, epochs: int = 2) -> list[list]:
    """Every micro-batch of all ranks together: sorted (draw, key, crop start, length, task seed)."""
    per_rank = []
    for rank in range(world_size):
        loader = build_train_loader(
            root, micro // world_size, seed=5, rank=rank, world_size=world_size, num_workers=workers,
            audio=False, batches_per_epoch=3,
        )  # fmt: skip
        batches = []
        for _ in range(epochs):
            batches += [
                [(int(d), k, int(s), int(n), int(z))
                 for d, k, s, n, z in zip(b["draw"], b["key"], b["start"], b["length"], b["sample_seed"])]
                for b in loader
            ]  # fmt: skip
        per_rank.append(batches)
    return [sorted(row for rank in per_rank for row in rank[i]) for i in range(len(per_rank[0]))]


def test_the_same_global_batches_on_any_world_size_and_workers(shards):
    expected = global_batches(shards, 1, 0)
    assert [row[0] for batch in expected for row in batch] == list(range(72))  # draws in order
    assert len({row[1] for row in expected[0]}) == 12  # a permutation: no window twice in 16 draws
    for world_size in (1, 2, 3, 4):
        for workers in (0, 1, 2):
            assert global_batches(shards, world_size, workers) == expected, (world_size, workers)


def test_one_shard_feeds_two_ranks_with_two_workers_each(tmp_path):
    write_shards(tmp_path, {"train": [1300] * 3}, per_shard=6)  # 6 windows, all in one shard
    assert len(load_manifest(tmp_path).splits["train"].shards) == 1
    per_rank = [epoch_items(tmp_path, rank, 2, 2, crops_per_window=2) for rank in range(2)]
    assert [len(batches) for batches in per_rank] == [3, 3]  # 12 draws / (2 ranks x 2)
    keys = [key for batches in per_rank for batch in batches for key, _, _ in batch]
    assert len(set(keys)) == 6 and all(keys.count(key) == 2 for key in keys)


def test_epochs_reshuffle_and_seeds_reproduce(shards):
    first = epoch_items(shards, 0, 2, 2, seed=7)
    assert epoch_items(shards, 0, 2, 2, seed=7) == first
    assert epoch_items(shards, 0, 2, 2, seed=7, epoch=1) != first
    assert epoch_items(shards, 0, 2, 2, seed=8) != first
    assert epoch_items(shards, 1, 2, 2, seed=7, epoch=1) != epoch_items(shards, 1, 2, 2, seed=7)


def test_every_rank_makes_the_fixed_number_of_batches_with_uneven_shards(tmp_path):
    # 5 shards of 3, 3, 3, 3, 1 windows over 2 ranks x 2 workers: some streams must wrap around.
    write_shards(tmp_path, {"train": [1300] * 6 + [700]}, per_shard=3)
    for batches_per_epoch in (None, 9):
        counts = [
            len(epoch_items(tmp_path, rank, 2, 2, batches_per_epoch=batches_per_epoch)) for rank in range(2)
        ]
        assert counts == ([4, 4] if batches_per_epoch is None else [9, 9])  # ceil(13 / (2 x 2))


def test_crops_per_window_lengthens_the_epoch(shards):
    per_rank = [epoch_items(shards, rank, 2, 2, crops_per_window=2) for rank in range(2)]
    assert [len(batches) for batches in per_rank] == [8, 8]  # 16 windows x 2 / (2 ranks x batch 2)
    keys = [key for batches in per_rank for batch in batches for key, _, _ in batch]
    assert len(set(keys)) == 16  # every window ...
    assert sorted(keys) == sorted([*set(keys)] * 2)  # ... exactly twice (two passes of each stream)


def test_main_process_iteration_equals_worker_processes(shards):
    stream = TrainStream(shards, 2, seed=3, rank=1, world_size=2, num_workers=2, audio=False)
    in_process = [signature(batch) for batch in stream]
    assert in_process == epoch_items(shards, 1, 2, 2, seed=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_continues_the_same_stream(shards, workers):
    def make():
        return build_train_loader(
            shards,
            2,
            seed=11,
            rank=1,
            world_size=2,
            num_workers=workers,
            batches_per_epoch=3,
        )

    def take(loader, count):
        out = []
        while len(out) < count:
            for batch in loader:
                out.append(batch)
                if len(out) == count:
                    break
        return out

    reference = take(make(), 7)  # crosses two epoch boundaries
    for consumed in (1, 4):
        loader = make()
        take(loader, consumed)
        state = json.loads(json.dumps(loader.state_dict()))
        assert (state["epoch"], state["batch"]) == divmod(consumed, 3)
        resumed = make()
        resumed.load_state_dict(state)
        for expected, got in zip(reference[consumed:], take(resumed, 7 - consumed)):
            assert_batches_equal(expected, got)


def test_resume_decodes_only_what_it_delivers(shards, monkeypatch):
    import a2p.data.pipeline as pipeline

    filled = []
    real_fill = pipeline.fill
    monkeypatch.setattr(
        pipeline,
        "fill",
        lambda batch, row, sample, *a, **kw: (
            filled.append(sample["__key__"]) or real_fill(batch, row, sample, *a, **kw)
        ),
    )
    loader = build_train_loader(shards, 2, seed=2, rank=0, world_size=1, num_workers=0, audio=False)
    loader.load_state_dict({"epoch": 0, "batch": 6})
    assert len(list(loader)) == 2 and len(filled) == 2 * 2  # 6 batches skipped without decoding


def test_another_seed_restarts_the_epoch_and_other_ranks_continue_at_the_same_draw(shards, caplog):
    loader = build_train_loader(shards, 2, seed=0, rank=0, world_size=2, audio=False)
    state = loader.state_dict()
    with caplog.at_level(logging.WARNING, logger="a2p.data.pipeline"):
        build_train_loader(shards, 2, seed=1, rank=0, world_size=2, audio=False).load_state_dict(state)
    assert "another sample order" in caplog.text and "seed 0 -> 1" in caplog.text
    # 2 ranks x 2 stopped after 3 micro-batches (12 draws): 1 rank x 4 continues at draw 12
    two = [build_train_loader(shards, 2, seed=0, rank=r, world_size=2, audio=False) for r in range(2)]
    following = []
    for loader in two:
        batches = iter(loader)
        for _ in range(3):
            next(batches)
        saved_position = loader.state_dict()
        following += next(batches)["draw"].tolist()
        assert saved_position["draws"] == 12
    saved = [{**loader.state_dict(), "epoch": 0, "batch": 3, "draws": 12} for loader in two]
    one = build_train_loader(shards, 4, seed=0, rank=0, world_size=1, audio=False)
    one.load_resharded_state(saved)
    assert next(iter(one))["draw"].tolist() == sorted(following) == [12, 13, 14, 15]


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match="no shard manifest"):
        build_train_loader(tmp_path, 1, rank=0, world_size=1)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_tar_names_the_file(tmp_path, damage):
    write_shards(tmp_path, {"train": [1300] * 2, "val": [1300]})
    victim = tmp_path / "train-000001.tar"
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
        manifest = load_manifest(tmp_path)  # a manifest without sizes: the tar reader must notice
        for shard in manifest.splits["train"].shards:
            shard.bytes = 0
        save_manifest(manifest, tmp_path)
    else:
        victim.write_bytes(data[:100] + b"\x17" * 400 + data[500:])  # same size, a broken header
    for workers in (0, 2):
        loader = build_train_loader(tmp_path, 1, rank=0, world_size=1, num_workers=workers, audio=False)
        with pytest.raises(DataError, match="train-000001.tar"):
            list(loader)
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train-000001.tar"):
        list(build_train_loader(tmp_path, 1, rank=0, world_size=1, audio=False))
    (tmp_path / "val-000000.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(DataError, match="val-000000.tar"):
        list(build_eval_loader(tmp_path, 1, split="val", rank=0, world_size=1, audio=False))


def test_synthesized_and_built_shards_load_exactly(tmp_path):
    """data_tools synth -> build (with mel features) -> training and evaluation batches hold the source values."""
    import numpy as np
    import soundfile as sf

    from a2p.constants import SAMPLES_PER_FRAME
    from a2p.data.decode import window_start
    from data_tools.build import build
    from data_tools.synth import synthesize

    (person,) = synthesize(tmp_path / "raw", ["TXB805"], 8, 22.0, 3)  # 2 train scenes of 660 frames
    shard_dir = tmp_path / "shards" / "TXB805"
    build(person, shard_dir, window_frames=600, hop_frames=300, features="mel", max_shard_bytes=1)
    sources: dict[str, tuple] = {}

    def source(scene: str) -> tuple:
        if scene not in sources:
            audio, _ = sf.read(person / f"{scene}_audio.wav", dtype="float32", always_2d=True)
            body = np.load(person / f"{scene}_body_pose.npy")
            missing = np.load(person / f"{scene}_missing_face_frames.npy")
            valid = np.ones(len(body), bool)
            valid[missing] = False
            sources[scene] = (audio, body, valid)
        return sources[scene]

    def check(batch: dict) -> int:
        frames = 0
        for i, key in enumerate(batch["key"]):
            if not key:
                continue
            audio, body, valid = source(key.rsplit("_", 1)[0])
            first = window_start(key) + int(batch["start"][i])
            length = int(batch["length"][i])
            frames += length
            np.testing.assert_array_equal(batch["body"][i, :length].numpy(), body[first : first + length])
            np.testing.assert_array_equal(
                batch["face_mask"][i, :length].numpy(), valid[first : first + length]
            )
            span = slice(first * SAMPLES_PER_FRAME, (first + length) * SAMPLES_PER_FRAME)
            np.testing.assert_array_equal(
                batch["audio"][i, : length * SAMPLES_PER_FRAME].numpy(), audio[span]
            )
            assert batch["features_mask"][i].sum() == length * 10 // 3 and first % 3 == 0
        return frames

    loader = build_train_loader(shard_dir, 2, seed=0, rank=0, world_size=1, num_workers=2, normalize=False)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["features"].shape[:2] == (2, 2000)
    assert all(check(batch) > 0 for batch in batches)
    manifest = load_manifest(shard_dir)
    val_windows = manifest.splits["val"].frames  # 2 scenes of 660 frames, windows [0, 600) and [300, 660)
    covered = sum(
        check(b) for b in build_eval_loader(shard_dir, 2, split="val", rank=0, world_size=1, normalize=False)
    )
    assert covered == 2 * (600 + 360) and val_windows == 2 * 660
