"""Data build hardening: misnamed scene files are named, duplicate scenes are refused, a shard swapped
between splits is refused by the loaders, and `a2p data verify` refuses non-finite manifest stats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import TINY_SCENES, TINY_SECONDS, copy_dataset, make_dataset

from a2p.cli.data import main
from a2p.data import build_eval_loader, build_train_loader
from a2p.data.crops import CropSpec, allocate, fill
from a2p.data.decode import NormStats, iter_shard, sample_frames
from a2p.data.format import MANIFEST_NAME, load_manifest, save_manifest
from a2p.data.indexed import write_descriptors
from a2p.errors import DataError
from a2p.fileio import file_sha256
from data_tools.build import build
from data_tools.validate import AUDIO_SUFFIX, BODY_SUFFIX, SCENE_SUFFIXES

WINDOW, HOP = 30, 15
CROP = 30
"""Crop length of the loader checks: one keyframe interval, the shortest padded length a `CropSpec` takes."""
STRAYS = {
    "Scene08_audio.wav": AUDIO_SUFFIX,
    "scene8audio.wav": AUDIO_SUFFIX,
    "scene_08_body_pose.npy": BODY_SUFFIX,
    "scene08_body_pose.npz": BODY_SUFFIX,
}
"""Misnamed files of an eighth scene (-> the companion of scene01 they copy): none is `sceneNN_{suffix}`."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw"), scenes=TINY_SCENES, seconds=TINY_SECONDS)


@pytest.fixture(scope="module")
def built(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / tiny.name
    build(tiny, out, window_frames=WINDOW, hop_frames=HOP)
    return out


def build_args(src: Path, out: Path) -> list[str]:
    settings = ["--window", str(WINDOW), "--hop", str(HOP), "--workers", "1"]
    return ["build", "--src", str(src), "--out", str(out), *settings]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_files_that_are_not_scene_files_are_named_in_one_warning(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = copy_dataset(tiny, tmp_path / "raw")
    for name, suffix in STRAYS.items():
        shutil.copyfile(src / f"scene01_{suffix}", src / name)
    (src / ".DS_Store").write_bytes(b"finder")
    assert (src / "data_stats.pth").is_file()  # a known companion of the scenes: no warning
    out = tmp_path / "shards"
    assert main(build_args(src, out)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, warnings
    assert f"{src}: ignoring {len(STRAYS)} file(s)" in warnings[0]
    assert all(name in warnings[0] for name in STRAYS), warnings[0]
    assert ".DS_Store" not in warnings[0] and "data_stats.pth" not in warnings[0]
    assert sum(len(info.scenes) for info in load_manifest(out).splits.values()) == TINY_SCENES


def test_a_complete_folder_builds_without_a_warning(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(build_args(tiny, tmp_path / "shards")) == 0
    assert " WARNING " not in capsys.readouterr().err


def test_one_scene_number_written_two_ways_is_refused_before_anything_is_written(
    tiny: Path, tmp_path: Path
) -> None:
    src = copy_dataset(tiny, tmp_path / "raw")
    for suffix in SCENE_SUFFIXES:
        shutil.copyfile(src / f"scene03_{suffix}", src / f"scene3_{suffix}")
    out = tmp_path / "shards"
    with pytest.raises(DataError) as caught:
        build(src, out, window_frames=WINDOW, hop_frames=HOP)
    message = str(caught.value)
    assert message.startswith(f"{src}: one scene number written two ways"), message
    assert "scene03 and scene3 are one scene, number 3" in message
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "copied", [(AUDIO_SUFFIX,), (BODY_SUFFIX,), SCENE_SUFFIXES], ids=["audio", "body", "whole scene"]
)
def test_a_byte_identical_copy_under_another_number_is_refused_naming_the_files(
    copied: tuple[str, ...], tiny: Path, tmp_path: Path
) -> None:
    src = copy_dataset(tiny, tmp_path / "raw")
    for suffix in copied:  # train scene01 recorded again as test scene07
        shutil.copyfile(src / f"scene01_{suffix}", src / f"scene07_{suffix}")
    out = tmp_path / "shards"
    with pytest.raises(DataError) as caught:
        build(src, out, window_frames=WINDOW, hop_frames=HOP)
    message = str(caught.value)
    assert message.startswith(f"{src}: duplicate scenes"), message
    assert "scene01 (train) and scene07 (test) are copies of one recording" in message
    for suffix in (AUDIO_SUFFIX, BODY_SUFFIX):
        named = f"scene01_{suffix} and scene07_{suffix} are byte-identical" in message
        assert named == (suffix in copied), message
    assert_nothing_written(out)


@pytest.mark.parametrize("part", [0, 1])
def test_a_copy_in_another_array_part_is_refused_by_every_part(part: int, tiny: Path, tmp_path: Path) -> None:
    src = copy_dataset(tiny, tmp_path / "raw")
    shutil.copyfile(src / f"scene01_{AUDIO_SUFFIX}", src / f"scene07_{AUDIO_SUFFIX}")  # part 0 and part 1
    out = tmp_path / "shards"
    with pytest.raises(
        DataError, match=f"scene01_{AUDIO_SUFFIX} and scene07_{AUDIO_SUFFIX} are byte-identical"
    ):
        build(src, out, window_frames=WINDOW, hop_frames=HOP, part=part, parts=2)
    assert_nothing_written(out)


def swap_in_test_shard(built: Path, root: Path, match_manifest: bool) -> tuple[Path, Path]:
    """A copy of `built` whose train-000000.tar holds the test split's first shard, and that path.

    With `match_manifest` the manifest's sizes and checksum of that shard are made to fit it, so
    only the samples' own record of their split can tell.
    """
    shards = Path(shutil.copytree(built, root / built.name))
    manifest = load_manifest(shards)
    train, test = manifest.splits["train"], manifest.splits["test"]
    assert len(train.shards) == 1, "the swap below assumes one train shard"
    target = shards / train.shards[0].name
    shutil.copyfile(shards / test.shards[0].name, target)
    if match_manifest:
        entry = train.shards[0]
        entry.samples, entry.frames = test.shards[0].samples, test.shards[0].frames
        entry.bytes, entry.sha256 = target.stat().st_size, file_sha256(target)
        train.samples = entry.samples
        save_manifest(manifest, shards)
        write_descriptors(manifest, shards)
    return shards, target


def first_train_batch(shards: Path) -> dict:
    loader = build_train_loader(shards, 2, crop_frames=CROP, min_frames=CROP // 2, batches_per_epoch=1)
    return next(iter(loader))


def all_eval_batches(shards: Path, split: str) -> list[dict]:
    return list(build_eval_loader(shards, 2, split=split, crop_frames=CROP))


def test_the_loaders_read_a_clean_build(built: Path) -> None:
    assert first_train_batch(built)["key"]
    for split in ("train", "val", "test"):
        assert all_eval_batches(built, split)


@pytest.mark.parametrize("match_manifest", [True, False], ids=["manifest fitted", "manifest as built"])
def test_the_loaders_refuse_a_test_shard_swapped_into_train(
    match_manifest: bool, built: Path, tmp_path: Path
) -> None:
    shards, target = swap_in_test_shard(built, tmp_path, match_manifest)
    with pytest.raises(DataError) as caught:
        first_train_batch(shards)
    message = str(caught.value)
    assert "meta.json says split 'test', but it is read as 'train'" in message, message
    assert target.name in message and "sample 'scene" in message
    if match_manifest:  # as built, the eval reader's size check refuses the shard first
        with pytest.raises(
            DataError, match=f"{target}: sample 'scene04_000000': meta.json says split 'test'"
        ):
            all_eval_batches(shards, "train")


def test_fill_checks_the_split_the_caller_reads(built: Path) -> None:
    shard = built / load_manifest(built).splits["test"].shards[0].name
    sample = next(iter_shard(shard))
    spec = CropSpec(crop_frames=CROP, min_frames=CROP, audio=False, features=False)
    frames = min(CROP, sample_frames(sample))
    for split in (None, "test"):  # None: the split the shard's name says
        fill(allocate(spec, 1), 0, sample, 0, frames, spec, NormStats.identity(), split=split)
    # the caller's split wins over the name: a manifest listing test-000000.tar under train is caught
    with pytest.raises(DataError) as caught:
        fill(allocate(spec, 1), 0, sample, 0, frames, spec, NormStats.identity(), split="train")
    assert str(caught.value).startswith(
        f"{shard}: sample {sample['__key__']!r}: meta.json says split 'test', but it is read as 'train' "
        "(the split being read)"
    ), caught.value


@pytest.mark.parametrize("field_name", ["stats", "person_stats"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_verify_refuses_non_finite_manifest_stats(
    field_name: str, value: float, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = Path(shutil.copytree(built, tmp_path / built.name))
    path = shards / MANIFEST_NAME
    data = json.loads(path.read_text())
    assert data[field_name] is not None, f"the tiny person has {field_name}"
    data[field_name]["body_std"][5] = value
    path.write_text(json.dumps(data))  # json writes NaN and Infinity, and reads them back
    assert main(["verify", str(shards)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field_name}.body_std holds NaN or Inf (1 of 104 values, first at index 5)" in err, err
