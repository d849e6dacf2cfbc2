"""Names that come from data stay inside their folder: a shard's sample keys name `a2p sample`'s
outputs, a manifest's shard names are joined to its folder; both go through one guard
(`a2p.fileio.plain_name`), and a name that is not plain is refused, naming where it came from."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from loader_shards import write_shards

from a2p.cli.data import main as data_main
from a2p.cli.sample import main as sample_main
from a2p.data import build_train_loader
from a2p.data.format import MANIFEST_NAME, load_manifest, save_manifest
from a2p.errors import A2PError, DataError
from a2p.fileio import plain_name
from a2p.inference.clips import Clip, file_clips

LEGITIMATE = ["scene01_000600", "clip", "take.2_000000", "..twice", ".hidden", "a b"]
NOT_PLAIN = {
    "": "it is empty",
    ".": "it names a folder",
    "..": "it names a folder",
    "../../outside": "it holds the path separator '/'",
    "/abs/evil": "it is an absolute path",
    "\\\\server\\share": "it is an absolute path",
    "sub/dir_000000": "it holds the path separator '/'",
    "sub\\dir_000000": "it holds the path separator '\\'",
    "C:evil": "it holds ':'",
    "nul\0byte": "it holds a NUL character",
}


@pytest.mark.parametrize("name", LEGITIMATE)
def test_plain_names_pass_unchanged(name: str, tmp_path: Path) -> None:
    assert plain_name(name, "name") == name
    assert (tmp_path / f"{name}.npz").parent == tmp_path


@pytest.mark.parametrize(("name", "reason"), NOT_PLAIN.items(), ids=repr)
def test_names_that_are_not_plain_are_refused_with_why(name: str, reason: str) -> None:
    with pytest.raises(DataError) as caught:
        plain_name(name, "shard.tar: sample key", DataError, "rebuild it")
    message = str(caught.value)
    assert message.startswith(f"shard.tar: sample key {name!r} is not a plain file name (")
    assert reason in message and message.endswith("; rebuild it"), message


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b"])
def test_every_clip_name_is_guarded(name: str) -> None:
    with pytest.raises(DataError, match=r"^somewhere: clip name .* is not a plain file name"):
        Clip(name, "somewhere", lambda: (np.zeros((1600, 2), np.float32), []))


def crafted_shards(root: Path, key: str) -> tuple[Path, Path]:
    """A test split of one 600-frame chunk whose sample is stored under `key`; its folder and shard."""
    manifest = write_shards(root, {"test": [600]})
    entry = manifest.splits["test"].shards[0]
    shard = root / entry.name
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]  # type: ignore[union-attr]
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(key + name[name.index(".") :])  # scene00_000000.body.npy -> KEY.body.npy
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(stream.getvalue())
    entry.bytes, entry.sha256 = len(stream.getvalue()), hashlib.sha256(stream.getvalue()).hexdigest()
    save_manifest(manifest, root)
    return root, shard


def entries_outside(top: Path, *inside: Path) -> list[Path]:
    """Everything under `top` that lies in none of the folders `inside`."""
    return sorted(p for p in top.rglob("*") if not any(p == d or d in p.parents for d in inside))


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_sample_refuses_a_shard_key_that_is_a_path(
    kind: str, model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "abs" / "outside_000000"
    if kind == "absolute" and "." in str(tmp_path):
        pytest.skip("WebDataset cuts a key at its first '.', so the key must hold none")
    key = "../../outside_000000" if kind == "relative" else str(target)
    shards, shard = crafted_shards(tmp_path / "shards", key)
    out = tmp_path / "deep" / "er" / "out"
    code = sample_main(
        [*model_args, "--data", str(shards), "--split", "test", "--out", str(out),
         "--reps", "1", "--sampler", "ddim2"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {shard}: sample key {key!r} is not a plain file name" in err, err
    assert "outputs would not stay inside the output folder" in err
    # nothing beside the shards and --out, not even a folder; the parents of --out are untouched
    assert entries_outside(tmp_path, shards, out) == [tmp_path / "deep", tmp_path / "deep" / "er"]
    assert not any(p.name.startswith("outside") for p in tmp_path.rglob("*"))


def test_sample_refuses_an_audio_file_whose_name_is_not_plain(
    model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    audio = clips / "take:1.wav"  # a legal POSIX name; on Windows `:` opens a stream of file `take`
    sf.write(audio, np.zeros((48_000, 2), np.float32), 48_000)
    (clips / "list.txt").write_text(f"{clips}/..\n")
    for inputs, name, source in (([audio], "take:1", audio), ([clips / "list.txt"], "..", f"{clips}/..")):
        with pytest.raises(DataError, match="outputs are named by clip"):
            file_clips([str(p) for p in inputs])
        out = tmp_path / "out"
        assert sample_main([*map(str, inputs), *model_args, "--out", str(out), "--sampler", "ddim2"]) == 2
        assert f"error: {source}: clip name {name!r} is not a plain file name" in capsys.readouterr().err
        assert not out.exists()


@pytest.fixture
def outside_manifest(tmp_path: Path) -> Path:
    """A shard set whose train shard lies outside its folder (where the bad name leads) and is listed there."""
    root = tmp_path / "person"
    write_shards(root, {"train": [700]}, per_shard=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(root / "train-000000.tar", elsewhere / "train-000000.tar")
    return root


def set_shard_name(root: Path, name: str) -> None:
    path = root / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["splits"]["train"]["shards"][0]["name"] = name
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("form", ["../elsewhere/train-000000.tar", "absolute", "/tmp/x.tar"])
def test_a_manifest_shard_name_that_is_a_path_is_refused(
    form: str, outside_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = outside_manifest
    name = str(root.parent / "elsewhere" / "train-000000.tar") if form == "absolute" else form
    set_shard_name(root, name)
    manifest = root / MANIFEST_NAME
    expected = f"{manifest}: split 'train' lists the shard {name!r}, which is not a shard file name"
    with pytest.raises(DataError) as caught:
        load_manifest(root)
    assert str(caught.value).startswith(expected), caught.value
    assert data_main(["verify", str(root)]) == 2
    assert f"error: {expected}" in capsys.readouterr().err
    with pytest.raises(DataError, match="lists the shard"):
        build_train_loader(root, 1, crop_frames=600, min_frames=300, batches_per_epoch=1)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("train-000000.tar\n", "is named train-NNNNNN.tar"),
        ("train-0.tar", "is named train-NNNNNN.tar"),
        ("test-000000.tar", "a shard of split 'train' is named train-NNNNNN.tar"),
        ("notes.txt", "is named train-NNNNNN.tar"),
        ("sub/train-000000.tar", "it holds the path separator '/'"),
        (7, "it is not a string (int)"),
    ],
    ids=repr,
)
def test_a_manifest_shard_name_must_be_a_shard_file_name(name: str, why: str, tmp_path: Path) -> None:
    write_shards(tmp_path, {"train": [700]})
    set_shard_name(tmp_path, name)
    with pytest.raises(A2PError) as caught:
        load_manifest(tmp_path)
    message = str(caught.value)
    assert f"{tmp_path / MANIFEST_NAME}: split 'train' lists the shard {name!r}" in message, message
    assert why in message and "Rebuild it with `a2p data build`" in message, message


def test_a_clean_manifest_loads_and_verifies(tmp_path: Path) -> None:
    write_shards(tmp_path, {"train": [700], "test": [600]})
    assert [s.name for s in load_manifest(tmp_path).splits["train"].shards] == ["train-000000.tar"]
    assert data_main(["verify", str(tmp_path)]) == 0


@pytest.mark.xfail(
    strict=True,
    reason="a2p/data/chunks.py unpacks key.rsplit('_', 1) and raises a bare ValueError for a key "
    "without a `_NNNNNN` tail, before any output name is made (outside this change's files)",
)
def test_sample_refuses_a_shard_key_without_a_start_frame(
    model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards, _ = crafted_shards(tmp_path / "shards", "../../outside")
    out = tmp_path / "deep" / "er" / "out"
    code = sample_main(
        [*model_args, "--data", str(shards), "--out", str(out), "--reps", "1", "--sampler", "ddim2"]
    )
    assert code == 2 and "'../../outside'" in capsys.readouterr().err
    assert entries_outside(tmp_path, shards, out) == [tmp_path / "deep", tmp_path / "deep" / "er"]
