"""Training crops and evaluation chunks: lengths, masks, padding, exact alignment, normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loader_shards import AUDIO_SCALE, missing_face, write_shards

from a2p.constants import (
    CROP_MAX_FRAMES,
    CROP_MIN_FRAMES,
    FACE_DIM,
    KEYFRAME_INTERVAL,
    POSE_DIM,
    SAMPLES_PER_FRAME,
)
from a2p.data import CropSpec, build_eval_loader, build_train_loader, draw_crop, eval_crops
from a2p.data.decode import window_start

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def feature_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops") / "TXB805"
    write_shards(root, {"train": [1300, 1000, 700, 300], "val": [1400, 650]}, feature_dim=4)
    return root


def scene_frames(key: str, start: int, length: int) -> np.ndarray:
    """Scene frame numbers of a crop of the window `key` starting `start` frames into it."""
    first = window_start(key) + start
    return np.arange(first, first + length)


def check_item(batch: dict, i: int, with_audio: bool, with_features: bool) -> None:
    """Every field of item `i` against the values the test shards encode."""
    key, start, length = batch["key"][i], int(batch["start"][i]), int(batch["length"][i])
    crop = CROP_MAX_FRAMES
    f = scene_frames(key, start, length)
    mask = batch["mask"][i].numpy()
    assert mask[:length].all() and not mask[length:].any()
    body, face = batch["body"][i].numpy(), batch["face"][i].numpy()
    assert body.shape == (crop, POSE_DIM) and face.shape == (crop, FACE_DIM)
    np.testing.assert_array_equal(body[:length, 0], f)
    np.testing.assert_array_equal(face[:length, 0][~missing_face(f)], f[~missing_face(f)])
    assert not body[length:].any() and not face[length:].any()
    face_mask = batch["face_mask"][i].numpy()
    np.testing.assert_array_equal(face_mask[:length], ~missing_face(f))
    assert not face_mask[length:].any() and not face[~face_mask].any()
    np.testing.assert_array_equal(batch["keyframes"][i].numpy(), body[::KEYFRAME_INTERVAL])
    np.testing.assert_array_equal(batch["keyframe_mask"][i].numpy(), mask[::KEYFRAME_INTERVAL])
    assert batch["keyframes"].shape[1:] == (crop // KEYFRAME_INTERVAL, POSE_DIM)
    if with_audio:
        audio = batch["audio"][i].numpy()
        assert audio.shape == (crop * SAMPLES_PER_FRAME, 2) and audio.dtype == np.float32
        valid = length * SAMPLES_PER_FRAME
        np.testing.assert_array_equal(audio[:valid, 0] * AUDIO_SCALE, np.repeat(f, SAMPLES_PER_FRAME))
        np.testing.assert_array_equal(
            audio[:valid, 1] * AUDIO_SCALE, np.tile(np.arange(SAMPLES_PER_FRAME), length)
        )
        assert not audio[valid:].any()
    else:
        assert "audio" not in batch
    if with_features:
        features, fmask = batch["features"][i].numpy(), batch["features_mask"][i].numpy()
        assert features.shape == (crop * 10 // 3, 4)
        count = length * 10 // 3
        assert fmask[:count].all() and not fmask[count:].any()
        u = features[:count, 0] + 1000 * features[:count, 1]
        np.testing.assert_array_equal(u, f[0] * 10 // 3 + np.arange(count))
        assert f[0] % 3 == 0  # the crop starts on the common frame/feature grid
        assert not features[count:].any()


def test_draw_crop_lengths_starts_and_short_windows():
    rng = np.random.default_rng(0)
    spec, grid_spec = CropSpec(), CropSpec(feature_rate_hz=100)
    assert grid_spec.start_grid == 3 and spec.start_grid == 1
    lengths, starts = [], []
    for _ in range(2000):
        start, length = draw_crop(rng, 1200, spec)
        assert CROP_MIN_FRAMES <= length < CROP_MAX_FRAMES and 0 <= start and start + length <= 1200
        lengths.append(length)
        starts.append(start)
        start, length = draw_crop(rng, 1200, grid_spec)
        assert start % 3 == 0 and start + length <= 1200
    assert min(lengths) < CROP_MIN_FRAMES + 10 and max(lengths) > CROP_MAX_FRAMES - 10
    assert min(starts) < 20 and max(starts) > 1200 - CROP_MIN_FRAMES - 20
    assert draw_crop(rng, 300, spec) == (0, 300)  # a short window is cropped whole
    assert eval_crops(1300, spec) == [(0, 600), (600, 600), (1200, 100)]


def test_training_crops_are_aligned_padded_and_masked(feature_shards):
    loader = build_train_loader(feature_shards, 3, seed=5, rank=0, world_size=1, num_workers=0)
    seen_lengths = []
    for batch in loader:
        assert batch["mask"].dtype == torch.bool and batch["start"].dtype == torch.int64
        for i in range(len(batch["key"])):
            check_item(batch, i, with_audio=True, with_features=True)
            seen_lengths.append(int(batch["length"][i]))
    assert 300 in seen_lengths  # the 300-frame scene, cropped whole
    assert all(CROP_MIN_FRAMES <= n < CROP_MAX_FRAMES for n in seen_lengths if n != 300)


def test_crops_without_audio_or_features(feature_shards):
    loader = build_train_loader(
        feature_shards, 2, seed=1, rank=0, world_size=1, audio=False, features=False, batches_per_epoch=2
    )
    for batch in loader:
        assert "features" not in batch
        for i in range(2):
            check_item(batch, i, with_audio=False, with_features=False)


def test_normalization_uses_manifest_stats(tmp_path):
    body_mean, body_std = np.linspace(-1, 1, POSE_DIM), np.linspace(0.5, 3, POSE_DIM)
    face_mean, face_std = np.linspace(2, 3, FACE_DIM), np.linspace(1, 4, FACE_DIM)
    face_std[7] = 0.0  # a constant channel normalizes with std 1, not a division by zero
    stats = {
        "body_mean": body_mean.tolist(),
        "body_std": body_std.tolist(),
        "face_mean": face_mean.tolist(),
        "face_std": face_std.tolist(),
    }
    write_shards(tmp_path, {"train": [700, 700]}, stats=stats)
    normed = next(iter(build_train_loader(tmp_path, 2, seed=3, rank=0, world_size=1, audio=False)))
    raw = next(
        iter(build_train_loader(tmp_path, 2, seed=3, rank=0, world_size=1, audio=False, normalize=False))
    )
    assert normed["key"] == raw["key"]
    mask, face_mask = raw["mask"], raw["face_mask"]
    expect_body = (raw["body"] - torch.tensor(body_mean, dtype=torch.float32)) / torch.tensor(
        body_std, dtype=torch.float32
    )
    torch.testing.assert_close(normed["body"][mask], expect_body[mask])
    face_std[7] = 1.0
    expect_face = (raw["face"] - torch.tensor(face_mean, dtype=torch.float32)) / torch.tensor(
        face_std, dtype=torch.float32
    )
    torch.testing.assert_close(normed["face"][face_mask], expect_face[face_mask])
    assert not normed["body"][~mask].any() and not normed["face"][~face_mask].any()


def test_person_units_are_the_references_float64_arithmetic_rounded_once(tmp_path):
    rng = np.random.default_rng(5)
    person = {  # float64 stats whose float32 rounding would change results (as the released files)
        "body_mean": rng.normal(size=POSE_DIM).tolist(),
        "body_std": rng.uniform(0.01, 2, POSE_DIM).tolist(),
        "face_mean": rng.normal(size=FACE_DIM).tolist(),
        "face_std": rng.uniform(0.001, 1, FACE_DIM).tolist(),
        "audio_mean": [0.0, 0.0],
        "audio_std_flat": [1.0],
    }
    write_shards(tmp_path, {"train": [700, 700]}, person_stats=person)
    loaders = {
        units: build_train_loader(
            tmp_path,
            2,
            seed=3,
            rank=0,
            world_size=1,
            audio=False,
            normalize=units != "raw",
            units="train" if units == "raw" else units,
        )
        for units in ("person", "auto", "train", "raw")
    }
    batches = {units: next(iter(loader)) for units, loader in loaders.items()}
    raw = batches["raw"]
    for kind, mask in (("body", raw["mask"]), ("face", raw["face_mask"])):
        mean, std = np.asarray(person[f"{kind}_mean"]), np.asarray(person[f"{kind}_std"])
        expected = ((raw[kind].numpy().astype(np.float64) - mean) / std).astype(np.float32)
        np.testing.assert_array_equal(batches["person"][kind][mask].numpy(), expected[mask.numpy()])
        np.testing.assert_array_equal(batches["auto"][kind].numpy(), batches["person"][kind].numpy())
    torch.testing.assert_close(batches["train"]["body"], raw["body"], rtol=0, atol=0)  # mean 0, std 1


def collect_eval(root, world_size: int, workers: int, batch_size: int = 2) -> list[list[tuple]]:
    """Per rank: the (key, start, length) of every chunk, in delivery order (padding included)."""
    out = []
    for rank in range(world_size):
        chunks = []
        loader = build_eval_loader(
            root, batch_size, split="val", rank=rank, world_size=world_size, num_workers=workers, audio=False
        )
        for batch in loader:
            for i, key in enumerate(batch["key"]):
                chunks.append((key, int(batch["start"][i]), int(batch["length"][i])))
                if key:
                    check_item(batch, i, with_audio=False, with_features=True)
                else:
                    assert not batch["mask"][i].any()
        out.append(chunks)
    return out


def test_eval_is_in_order_deterministic_and_covers_every_frame(feature_shards):
    (single,) = collect_eval(feature_shards, 1, 0)
    # Val scenes: 1400 frames -> windows at 0 (700) and 600 (700) and 1200 (200); 650 -> one window.
    assert [c[0] for c in single] == sorted(c[0] for c in single)
    covered: dict[str, list[int]] = {}
    for key, start, length in single:
        covered.setdefault(key, []).extend(range(start, start + length))
    assert {k: sorted(v) == list(range(len(v))) for k, v in covered.items()} == dict.fromkeys(covered, True)
    assert sum(len(v) for v in covered.values()) == 700 + 700 + 200 + 650
    assert collect_eval(feature_shards, 1, 2) == [single]  # workers change nothing
    ranks = collect_eval(feature_shards, 2, 2)
    assert len(ranks[0]) == len(ranks[1])  # padded to the same number of chunks
    assert [c for c in ranks[0] if c[0]] == single[0::2] and [c for c in ranks[1] if c[0]] == single[1::2]
    assert collect_eval(feature_shards, 2, 2) == ranks
