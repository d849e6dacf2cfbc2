"""`a2p data build`: exact contents read back with `tarfile`, splits, stats, bad inputs, resume, features, merge."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import (
    TINY_SCENES,
    TINY_SECONDS,
    copy_dataset,
    decode,
    make_dataset,
    read_split_samples,
    read_tar,
    shard_files,
)

from a2p.cli.data import main
from a2p.constants import FACE_DIM, POSE_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME, WRAPPED_POSE_CHANNEL
from a2p.data.format import (
    FEATURES_KEY,
    MANIFEST_NAME,
    features_frames,
    load_manifest,
    sample_key,
    window_starts,
)
from a2p.data.person_stats import STATS_FILENAME, load_person_stats
from a2p.errors import DataError
from a2p.version import __version__
from data_tools.build import FAIL_AFTER_ENV, build
from data_tools.encode import EncodedSample
from data_tools.journal import BUILD_DIR, JOURNAL_SUFFIX, BuildIdentity, ShardWriter
from data_tools.merge import merge_parts
from data_tools.validate import TWO_PI, wrap_angles

WINDOW, HOP = 120, 60
MAX_SHARD_MB = 2.0
MAX_SHARD_BYTES = int(MAX_SHARD_MB * 1024 * 1024)
REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 120
SPLIT_OF_8 = ["train"] * 2 + ["val"] * 2 + ["test"] * 4


def build_args(src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "build", "--src", str(src), "--out", str(out), "--window", str(WINDOW), "--hop", str(HOP),
        "--max-shard-mb", str(MAX_SHARD_MB), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def built(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / dataset.name
    assert main(build_args(dataset, out, "--workers", "2")) == 0
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"), scenes=TINY_SCENES, seconds=TINY_SECONDS)


def source(dataset: Path, scene: str, suffix: str) -> np.ndarray:
    return np.load(dataset / f"{scene}_{suffix}")


def test_every_frame_of_every_scene_appears_with_its_exact_values(dataset: Path, built: Path) -> None:
    samples = read_split_samples(built)
    scenes = sorted({p.name.split("_")[0] for p in dataset.glob("scene*_body_pose.npy")})
    seen: dict[str, np.ndarray] = {}
    for split, entries in samples.items():
        for _, key, files in entries:
            sample = decode(files)
            meta = sample["meta.json"]
            scene, start, frames = meta["scene"], meta["start"], meta["frames"]
            assert key == sample_key(scene, start) and meta["split"] == split and meta["person"] == "PXB184"
            stop = start + frames
            body = source(dataset, scene, "body_pose.npy")
            expected_body = body.copy()
            expected_body[:, WRAPPED_POSE_CHANNEL] = wrap_angles(body[:, WRAPPED_POSE_CHANNEL])
            missing = source(dataset, scene, "missing_face_frames.npy")
            valid = np.ones(body.shape[0], bool)
            valid[missing] = False
            face = source(dataset, scene, "face_expression.npy") * valid[:, None]
            audio, rate = sf.read(dataset / f"{scene}_audio.wav", dtype="int16")
            assert sample["body.npy"].dtype == np.float32 and sample["body.npy"].shape == (frames, POSE_DIM)
            np.testing.assert_array_equal(sample["body.npy"], expected_body[start:stop])
            assert sample["face.npy"].shape == (frames, FACE_DIM)
            np.testing.assert_array_equal(sample["face.npy"], face[start:stop])
            np.testing.assert_array_equal(sample["face_valid.npy"], valid[start:stop])
            assert sample["sample_rate"] == rate == SAMPLE_RATE and sample["audio_subtype"] == "PCM_16"
            np.testing.assert_array_equal(
                sample["audio"], audio[start * SAMPLES_PER_FRAME : stop * SAMPLES_PER_FRAME]
            )
            covered = seen.setdefault(scene, np.zeros(body.shape[0], int))
            covered[start:stop] += 1
    assert sorted(seen) == scenes
    for scene, covered in seen.items():
        assert covered.min() >= 1, f"{scene}: frames {np.flatnonzero(covered == 0)} in no window"
        starts = window_starts(len(covered), WINDOW, HOP)
        keys = [key for entries in samples.values() for _, key, _ in entries if key.startswith(scene + "_")]
        assert keys == [sample_key(scene, s) for s in starts]


def test_wrap_puts_channel_3_into_range_and_keeps_the_angle(dataset: Path, built: Path) -> None:
    raw = np.concatenate([np.load(p)[:, WRAPPED_POSE_CHANNEL] for p in dataset.glob("*_body_pose.npy")])
    assert (raw >= TWO_PI).any(), "the synthetic capture-1 person must need the wrap"
    for entries in read_split_samples(built).values():
        for _, _, files in entries:
            channel = decode(files)["body.npy"][:, WRAPPED_POSE_CHANNEL]
            assert (channel >= 0).all() and (channel < TWO_PI).all()
    wrapped = wrap_angles(raw)
    np.testing.assert_allclose(np.cos(wrapped), np.cos(raw), atol=1e-5)
    np.testing.assert_allclose(np.sin(wrapped), np.sin(raw), atol=1e-5)


def test_splits_by_scene_order_and_manifest(dataset: Path, built: Path) -> None:
    manifest = load_manifest(built)
    assert manifest.person == "PXB184" and manifest.tool_version == __version__
    assert manifest.window_frames == WINDOW and manifest.hop_frames == HOP and manifest.features is None
    scenes = [f"scene{n:02d}" for n in range(1, 9)]
    for split in ("train", "val", "test"):
        expected = [s for s, sp in zip(scenes, SPLIT_OF_8) if sp == split]
        info = manifest.splits[split]
        assert info.scenes == expected
        frames = sum(np.load(dataset / f"{s}_body_pose.npy", mmap_mode="r").shape[0] for s in expected)
        assert info.frames == frames and info.hours == pytest.approx(frames / 30 / 3600)
        assert info.samples == sum(s.samples for s in info.shards)
        assert len(info.shards) > 1, "the small bound must give several shards per split"
        for index, shard in enumerate(info.shards):
            path = built / shard.name
            assert shard.name == f"{split}-{index:06d}.tar"
            assert shard.bytes == path.stat().st_size
            assert shard.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            contents = read_tar(path)
            assert len(contents) == shard.samples
            assert shard.frames == sum(decode(f)["meta.json"]["frames"] for f in contents.values())
            assert shard.samples == 1 or shard.bytes <= MAX_SHARD_BYTES
    for name, digest in manifest.sources.items():
        assert hashlib.sha256((dataset / name).read_bytes()).hexdigest() == digest
    assert len(manifest.sources) == 4 * len(scenes) + 1  # and the data_stats.pth


def test_the_persons_data_stats_travel_in_the_manifest(dataset: Path, built: Path, tmp_path: Path) -> None:
    stats = load_person_stats(dataset)
    manifest = load_manifest(built)
    assert manifest.person_stats == stats.to_lists()
    assert manifest.units_stats("auto") == ("person", manifest.person_stats)
    assert manifest.units_stats("train") == ("train", manifest.stats)
    # without a data_stats.pth: the train split's units only, and `person` is refused by name
    src = copy_dataset(dataset, tmp_path / "raw")
    (src / STATS_FILENAME).unlink()
    plain = build(src, tmp_path / "plain", workers=1, window_frames=WINDOW, hop_frames=HOP)
    assert plain is not None and plain.person_stats is None
    assert plain.units_stats("auto") == ("train", plain.stats)
    with pytest.raises(DataError, match="without data_stats.pth"):
        plain.units_stats("person", "plain/manifest.json")


def test_a_malformed_data_stats_is_refused_before_anything_is_built(dataset: Path, tmp_path: Path) -> None:
    src = copy_dataset(dataset, tmp_path / "raw")
    torch.save({"pose_mean": torch.zeros(104)}, src / STATS_FILENAME)
    with pytest.raises(DataError, match=rf"{STATS_FILENAME}.*without pose_std"):
        build(src, tmp_path / "out", workers=1, window_frames=WINDOW, hop_frames=HOP)
    assert not (tmp_path / "out").exists()


def test_stats_are_recomputed_from_the_train_sources(dataset: Path, built: Path) -> None:
    bodies, faces = [], []
    for scene in ("scene01", "scene02"):
        body = source(dataset, scene, "body_pose.npy").astype(np.float64)
        body[:, WRAPPED_POSE_CHANNEL] = wrap_angles(body[:, WRAPPED_POSE_CHANNEL])
        valid = np.ones(body.shape[0], bool)
        valid[source(dataset, scene, "missing_face_frames.npy")] = False
        bodies.append(body)
        faces.append(source(dataset, scene, "face_expression.npy")[valid].astype(np.float64))
    stats = load_manifest(built).stats
    body, face = np.concatenate(bodies), np.concatenate(faces)
    np.testing.assert_allclose(stats["body_mean"], body.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["body_std"], body.std(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["face_mean"], face.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["face_std"], face.std(0), rtol=1e-9, atol=1e-9)
    assert len(stats["body_mean"]) == POSE_DIM and len(stats["face_std"]) == FACE_DIM


def test_shards_do_not_depend_on_worker_count(dataset: Path, built: Path, tmp_path: Path) -> None:
    out = tmp_path / dataset.name
    assert main(build_args(dataset, out, "--workers", "1")) == 0
    assert json.loads((out / MANIFEST_NAME).read_text()) == json.loads((built / MANIFEST_NAME).read_text())


def test_shard_writer_knows_the_final_size_so_the_bound_holds(tmp_path: Path) -> None:
    """The bound counts tar headers, block padding, the end blocks and the padding to a whole record."""
    rng = np.random.default_rng(0)
    identity = BuildIdentity(params={}, sources={})
    for index, limit in enumerate((20_000, 33_333, 61_440, 100_001)):
        writer = ShardWriter(tmp_path, "train", index)
        sizes = []
        for n in range(40):
            sample = EncodedSample(f"scene01_{n:06d}", 1, {"a.npy": bytes(int(rng.integers(1, 3000)))})
            if writer.would_overflow(sample, limit):
                break
            writer.add(sample)
            sizes.append(writer.final_bytes)
        entry = writer.finish(identity)
        assert entry["bytes"] == sizes[-1] == (tmp_path / entry["name"]).stat().st_size <= limit


def test_person_id_is_matched_exactly_not_by_substring(tiny: Path, tmp_path: Path) -> None:
    src = copy_dataset(tiny, tmp_path / "raw", "XPXB184")
    build(src, tmp_path / "shards", workers=1, window_frames=WINDOW, hop_frames=HOP)
    sample = decode(next(iter(read_tar(tmp_path / "shards" / "train-000000.tar").values())))
    raw = np.load(src / "scene01_body_pose.npy")
    np.testing.assert_array_equal(sample["body.npy"], raw[: sample["meta.json"]["frames"]])


def _write_wav(path: Path, frames_of_audio: int, rate: int = SAMPLE_RATE, channels: int = 2, **kw) -> None:
    sf.write(path, np.zeros((frames_of_audio, channels), np.float32), rate, **kw)


def _mutate(case: str, d: Path) -> tuple[str, str]:
    """Break the dataset `d` one way; returns (file the error must name, words it must contain)."""
    frames = np.load(d / "scene03_body_pose.npy").shape[0]
    samples = frames * SAMPLES_PER_FRAME
    if case == "audio_length":
        _write_wav(d / "scene03_audio.wav", samples - 7, subtype="PCM_16")
        return "scene03_audio.wav", f"{samples - 7} samples per channel, expected {samples}"
    if case == "sample_rate":
        _write_wav(d / "scene03_audio.wav", samples, rate=44_100, subtype="PCM_16")
        return "scene03_audio.wav", "sample rate is 44100 Hz"
    if case == "mono":
        _write_wav(d / "scene03_audio.wav", samples, channels=1, subtype="PCM_16")
        return "scene03_audio.wav", "1 channel(s), expected 2"
    if case == "audio_nan":
        audio = np.zeros((samples, 2), np.float32)
        audio[100, 1] = np.nan
        sf.write(d / "scene03_audio.wav", audio, SAMPLE_RATE, subtype="FLOAT")
        return "scene03_audio.wav", "NaN or Inf"
    if case == "pose_nan":
        body = np.load(d / "scene03_body_pose.npy")
        body[5, 7] = np.nan
        np.save(d / "scene03_body_pose.npy", body)
        return "scene03_body_pose.npy", "NaN or Inf (first at frame 5, channel 7)"
    if case == "face_inf":
        face = np.load(d / "scene03_face_expression.npy")
        valid = np.setdiff1d(np.arange(frames), np.load(d / "scene03_missing_face_frames.npy"))
        face[valid[0], 0] = np.inf
        np.save(d / "scene03_face_expression.npy", face)
        return "scene03_face_expression.npy", "NaN or Inf"
    if case == "pose_width":
        np.save(d / "scene03_body_pose.npy", np.zeros((frames, POSE_DIM - 1), np.float32))
        return "scene03_body_pose.npy", f"(frames, {POSE_DIM})"
    if case == "face_width":
        np.save(d / "scene03_face_expression.npy", np.zeros((frames, FACE_DIM + 1), np.float32))
        return "scene03_face_expression.npy", f"(frames, {FACE_DIM})"
    if case == "pose_1d":
        np.save(d / "scene03_body_pose.npy", np.zeros(frames, np.float32))
        return "scene03_body_pose.npy", "expected a 2-D"
    if case == "frame_mismatch":
        np.save(d / "scene03_face_expression.npy", np.zeros((frames - 1, FACE_DIM), np.float32))
        return (
            "scene03_face_expression.npy",
            f"has {frames - 1} frames but scene03_body_pose.npy has {frames}",
        )
    if case == "missing_companion":
        (d / "scene03_face_expression.npy").unlink()
        return "scene03_face_expression.npy", "missing companion files"
    if case == "missing_out_of_range":
        np.save(d / "scene03_missing_face_frames.npy", np.array([0, frames], np.int64))
        return "scene03_missing_face_frames.npy", f"out of range [0, {frames})"
    if case == "missing_not_integers":
        np.save(d / "scene03_missing_face_frames.npy", np.array([1.5]))
        return "scene03_missing_face_frames.npy", "must be integers"
    if case == "not_npy":
        (d / "scene03_body_pose.npy").write_bytes(b"not an array")
        return "scene03_body_pose.npy", "not a readable .npy"
    if case == "audio_garbage":
        (d / "scene03_audio.wav").write_bytes(b"RIFF....WAVEjunk")
        return "scene03_audio.wav", "not a readable audio file"
    if case == "too_few_scenes":
        for path in d.glob("scene07_*"):
            path.unlink()
        return str(d), "has 6 scenes, needs at least 7"
    if case == "empty_folder":
        for path in d.iterdir():
            path.unlink()
        return str(d), "no scenes found"
    raise AssertionError(case)


BAD_INPUTS = [
    "audio_length", "sample_rate", "mono", "audio_nan", "pose_nan", "face_inf", "pose_width", "face_width",
    "pose_1d", "frame_mismatch", "missing_companion", "missing_out_of_range", "missing_not_integers", "not_npy",
    "audio_garbage", "too_few_scenes", "empty_folder",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_naming_the_file_and_no_shard_is_written(
    case: str, tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = copy_dataset(tiny, tmp_path / "raw")
    name, words = _mutate(case, src)
    out = tmp_path / "shards"
    assert main(build_args(src, out, "--workers", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and words in err, err
    assert not list(out.glob("*.tar")) and not list(out.glob(".*.tmp")) and not (out / MANIFEST_NAME).exists()


def test_all_bad_scenes_are_reported_together(tiny: Path, tmp_path: Path) -> None:
    src = copy_dataset(tiny, tmp_path / "raw")
    _mutate("pose_nan", src)
    np.save(src / "scene05_missing_face_frames.npy", np.array([-1]))
    with pytest.raises(DataError) as caught:
        build(src, tmp_path / "shards")
    assert "scene03_body_pose.npy" in str(caught.value) and "scene05_missing_face_frames.npy" in str(
        caught.value
    )


def test_missing_source_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope: no such folder" in capsys.readouterr().err


def test_lossless_audio_for_24_bit_and_float_recordings(tiny: Path, tmp_path: Path) -> None:
    src = copy_dataset(tiny, tmp_path / "raw")
    originals = {}
    for scene, subtype in (("scene01", "PCM_24"), ("scene02", "FLOAT")):
        audio, _ = sf.read(src / f"{scene}_audio.wav", dtype="float32")
        audio = audio * 0.9 + 1e-5  # not representable in 16 bits
        sf.write(src / f"{scene}_audio.wav", audio, SAMPLE_RATE, subtype=subtype)
        originals[scene] = sf.read(
            src / f"{scene}_audio.wav", dtype="int32" if subtype == "PCM_24" else "float32"
        )[0]
    build(src, tmp_path / "shards", window_frames=WINDOW, hop_frames=HOP)
    for _, key, files in read_split_samples(tmp_path / "shards")["train"]:
        sample = decode(files)
        scene, start, frames = key.split("_")[0], sample["meta.json"]["start"], sample["meta.json"]["frames"]
        assert ("audio.flac" in files) == (scene == "scene01") and ("audio.wav" in files) == (
            scene == "scene02"
        )
        expected = originals[scene][start * SAMPLES_PER_FRAME : (start + frames) * SAMPLES_PER_FRAME]
        np.testing.assert_array_equal(sample["audio"], expected)


def test_interrupted_build_resumes_without_redoing_finished_shards(
    dataset: Path, built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / dataset.name
    monkeypatch.setenv(FAIL_AFTER_ENV, "3")
    with pytest.raises(RuntimeError, match="injected failure"):
        build(dataset, out, window_frames=WINDOW, hop_frames=HOP, max_shard_bytes=MAX_SHARD_BYTES)
    finished = shard_files(out)
    assert sorted(finished) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [p.name for p in out.glob(".*.tmp")] == [".train-000003.tar.tmp"], (
        "half a shard, under a temp name"
    )
    assert not (out / MANIFEST_NAME).exists()

    monkeypatch.delenv(FAIL_AFTER_ENV)
    build(dataset, out, window_frames=WINDOW, hop_frames=HOP, max_shard_bytes=MAX_SHARD_BYTES)
    after = shard_files(out)
    assert {name: after[name] for name in finished} == finished, "finished shards were rewritten"
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / MANIFEST_NAME).read_text()) == json.loads((built / MANIFEST_NAME).read_text())

    # A damaged finished shard is rebuilt (with everything after it in its split), nothing else.
    with (out / "val-000000.tar").open("r+b") as f:
        f.seek(700)
        f.write(b"\xff")
    build(dataset, out, window_frames=WINDOW, hop_frames=HOP, max_shard_bytes=MAX_SHARD_BYTES)
    again = shard_files(out)
    assert again["val-000000.tar"] != after["val-000000.tar"]
    assert {k: v for k, v in again.items() if not k.startswith("val")} == {
        k: v for k, v in after.items() if not k.startswith("val")
    }
    assert json.loads((out / MANIFEST_NAME).read_text()) == json.loads((built / MANIFEST_NAME).read_text())


def test_a_build_killed_by_sigkill_resumes(dataset: Path, built: Path, tmp_path: Path) -> None:
    """`a2p data build` in a subprocess with 2 workers dies by SIGKILL (no clean-up at all) while
    writing its third shard; the rerun keeps the two finished ones and ends equal to a clean build."""
    out = tmp_path / dataset.name
    env = {**os.environ, FAIL_AFTER_ENV: "2:kill", "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-m", "a2p", "data", *build_args(dataset, out, "--workers", "2")],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = shard_files(out)
    assert sorted(finished) == ["train-000000.tar", "train-000001.tar"]
    assert [p.name for p in out.glob(".*.tmp")] == [".train-000002.tar.tmp"]
    assert not (out / MANIFEST_NAME).exists()

    assert main(build_args(dataset, out, "--workers", "2")) == 0
    after = shard_files(out)
    assert {name: after[name] for name in finished} == finished, "finished shards were rewritten"
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / MANIFEST_NAME).read_text()) == json.loads((built / MANIFEST_NAME).read_text())

    # Killed between a shard's rename and its journal: the final name alone is not trusted.
    (out / BUILD_DIR / f"train-000001.tar{JOURNAL_SUFFIX}").unlink()
    assert main(build_args(dataset, out, "--workers", "1")) == 0
    again = shard_files(out)
    assert again["train-000000.tar"] == after["train-000000.tar"]
    assert again["train-000001.tar"] != after["train-000001.tar"]
    assert json.loads((out / MANIFEST_NAME).read_text()) == json.loads((built / MANIFEST_NAME).read_text())


def test_rerun_with_other_settings_refuses_or_rebuilds_with_overwrite(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    assert main(build_args(tiny, out, "--workers", "1")) == 0
    before = shard_files(out)
    assert main(["build", "--src", str(tiny), "--out", str(out), "--window", "30", "--hop", "30"]) == 2
    err = capsys.readouterr().err
    assert "window_frames 120 -> 30" in err and "--overwrite" in err
    assert shard_files(out) == before and (out / MANIFEST_NAME).exists()
    args = ["build", "--src", str(tiny), "--out", str(out), "--window", "30", "--hop", "30", "--overwrite"]
    assert main(args) == 0
    assert load_manifest(out).window_frames == 30
    assert main(["verify", str(out)]) == 0


def test_features_are_stored_per_window_from_the_whole_scene(tiny: Path, tmp_path: Path) -> None:
    from a2p.models.audio import build_featurizer, featurize_long

    out = tmp_path / "shards"
    assert (
        main(build_args(tiny, out, "--workers", "1", "--features", "mel", "--window", "30", "--hop", "15"))
        == 0
    )
    manifest = load_manifest(out)
    featurizer = build_featurizer("mel")
    assert manifest.features == {
        "name": "mel", "version": featurizer.version, "dim": featurizer.dim, "rate_hz": 100,
        "dtype": "float16", "fingerprint": featurizer.fingerprint,
    }  # fmt: skip
    audio, _ = sf.read(tiny / "scene01_audio.wav", dtype="float32")
    whole = featurize_long(featurizer, torch.from_numpy(audio)[None])[0].numpy()
    checked = 0
    for _, key, files in read_split_samples(out)["train"]:
        sample = decode(files)
        if not key.startswith("scene01_"):
            continue
        start, frames = sample["meta.json"]["start"], sample["meta.json"]["frames"]
        features = sample[FEATURES_KEY]
        assert features.dtype == np.float16 and features.shape == (
            features_frames(frames, 100),
            featurizer.dim,
        )
        first = start * 10 // 3
        np.testing.assert_array_equal(features, whole[first : first + features.shape[0]].astype(np.float16))
        checked += 1
    assert checked == len(window_starts(60, 30, 15))
    assert main(["verify", str(out)]) == 0


def test_features_need_a_hop_on_the_feature_grid(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="multiple of 3 frames"):
        build(tiny, tmp_path / "shards", features="mel", window_frames=40, hop_frames=20)


def test_vq_wav2vec_features_are_refused_with_the_reason(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They depend on the whole crop (GroupNorm over time), so training runs them per crop instead."""
    out = tmp_path / "shards"
    assert main([*build_args(tiny, out), "--features", "vq-wav2vec", "--audio-weights", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert "normalizes over the whole input" in err and "--audio-weights" in err
    assert not (out / "manifest.json").exists()


def test_array_parts_merge_into_the_manifest_of_a_single_build(
    dataset: Path, built: Path, tmp_path: Path
) -> None:
    out = tmp_path / dataset.name
    kwargs = {"window_frames": WINDOW, "hop_frames": HOP, "max_shard_bytes": MAX_SHARD_BYTES, "parts": 3}
    for part in (2, 0):  # tasks finish in any order
        assert build(dataset, out, part=part, **kwargs) is None
    with pytest.raises(DataError, match="1 of 3 build parts have not finished: .*part-001-of-003.json"):
        merge_parts(out)
    build(dataset, out, part=1, **kwargs)
    assert main(["merge", str(out)]) == 0
    merged, single = load_manifest(out), load_manifest(built)
    names = [s.name for split in merged.splits.values() for s in split.shards]
    assert len(names) == len(set(names)) and "val-010000.tar" in names and "test-020000.tar" in names
    for split in ("train", "val", "test"):
        a, b = merged.splits[split], single.splits[split]
        assert (a.scenes, a.samples, a.frames) == (b.scenes, b.samples, b.frames)
    for key, values in single.stats.items():
        np.testing.assert_allclose(merged.stats[key], values, rtol=1e-9, atol=1e-12)
    assert merged.sources == single.sources
    assert main(["verify", str(out)]) == 0
    # The same folder rebuilt in one part: refused without --overwrite, then equal to the single build.
    with pytest.raises(DataError, match="parts 3 -> 1"):
        build(dataset, out, **{**kwargs, "parts": 1})
    build(dataset, out, **{**kwargs, "parts": 1}, overwrite=True)
    assert load_manifest(out).to_json() == single.to_json()
    assert main(["verify", str(out)]) == 0
    shutil.rmtree(out / ".parts")
    with pytest.raises(DataError, match="no finished build parts"):
        merge_parts(out)
