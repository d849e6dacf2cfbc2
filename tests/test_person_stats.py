"""The reference's per-person `data_stats.pth`: read, checked, and applied as the reference applies it.

The fixture `fixtures/reference/GQS883_data_stats.pth` is the released file, unchanged
(facebookresearch/audio2photoreal at 449761e, dataset/GQS883; CC BY-NC 4.0, Meta Platforms, see
fixtures/reference/README.md). The reference's arithmetic is restated here in its own mixed
numpy/torch form (data_loaders/data.py `_load_std`, `__getitem__`, `inv_transform`): a2p's
results must equal it bit for bit, dtype included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reference_weights import FIXTURES

from a2p.data.person_stats import STATS_FILENAME, PersonStats, load_person_stats, person_stats_path
from a2p.errors import DataError
from a2p.models.torch_files import NUMPY_GLOBALS, load_torch_file

FIXTURE = FIXTURES / "GQS883_data_stats.pth"
RELEASED = sorted(Path("/work/shared/reference/stats").glob("*_data_stats.pth"))
"""The four released files, where this machine has them (not in the repository)."""


def raw(path: Path = FIXTURE) -> dict[str, np.ndarray]:
    return load_torch_file(path, allow=NUMPY_GLOBALS)


@pytest.mark.parametrize("path", [FIXTURE, *RELEASED], ids=lambda p: p.name)
def test_released_files_load_with_their_dtypes(path):
    stats = load_person_stats(path)
    stored = raw(path)
    assert stats.body_mean.shape == stats.body_std.shape == (104,)
    assert stats.face_mean.shape == stats.face_std.shape == (256,)
    assert stats.audio_mean.shape == (2,) and stats.audio_std_flat.shape == (1,)
    assert stats.body_std.dtype == np.float64 and stats.audio_std_flat.dtype == np.float32
    assert np.array_equal(stats.body_std, stored["pose_std"].reshape(-1))
    assert np.array_equal(stats.face_mean, stored["code_mean"])
    assert np.array_equal(stats.audio_std_flat, stored["audio_std_flat"])  # not the per-channel audio_std
    assert stats.source == str(path)


def test_motion_normalization_is_the_reference_arithmetic():
    stored = raw()
    stats = load_person_stats(FIXTURE)
    rng = np.random.default_rng(0)
    body = rng.normal(size=(600, 104)).astype(np.float32) * 0.3 + stored["pose_mean"].astype(np.float32)
    face = rng.normal(size=(600, 256))  # the reference reads face codes with astype(float)
    # __getitem__: numpy, stats reshaped by _load_std; the collate then casts to float32.
    expected_body = (body - stored["pose_mean"].reshape(-1)) / stored["pose_std"].reshape(-1)
    expected_face = (face - stored["code_mean"]) / stored["code_std"]
    out_body = stats.normalize_motion(body, "body")
    assert out_body.dtype == np.float64 and np.array_equal(out_body, expected_body)
    assert np.array_equal(stats.normalize_motion(face, "face"), expected_face)
    as_tensor = stats.normalize_motion(torch.from_numpy(body), "body")
    assert as_tensor.dtype == torch.float64 and np.array_equal(as_tensor.numpy(), expected_body)
    # inv_transform on the sampler's float32 tensor: float32 * float64 tensors promote to float64.
    sample = torch.from_numpy(expected_body.astype(np.float32))
    expected = sample * torch.tensor(stored["pose_std"].reshape(-1)) + torch.tensor(
        stored["pose_mean"].reshape(-1)
    )
    out = stats.denormalize_motion(sample, "body")
    assert out.dtype == torch.float64 and torch.equal(out, expected)
    assert np.allclose(stats.denormalize_motion(expected_face, "face"), face, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'body' or 'face'"):
        stats.normalize_motion(body, "pose")


@pytest.mark.filterwarnings("ignore:__array_wrap__")  # numpy 2 about torch's mixed arithmetic
def test_waveform_normalization_is_the_reference_arithmetic():
    stored = raw()
    stats = load_person_stats(FIXTURE)
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(4800, 2, generator=generator) * 0.02  # torchaudio's float32 (S, 2)
    expected = (audio - stored["audio_mean"]) / stored["audio_std_flat"]  # __getitem__, as written
    out = stats.normalize_audio(audio)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert np.array_equal(stats.normalize_audio(audio.numpy()), expected.numpy())
    back = stats.denormalize_audio(expected.numpy())  # generate.py: inv_transform(audio.numpy(), "audio")
    assert back.dtype == np.float32
    assert np.array_equal(back, expected.numpy() * stored["audio_std_flat"] + stored["audio_mean"])
    assert torch.allclose(stats.denormalize_audio(out), audio, rtol=0, atol=1e-7)


def test_a_person_folder_and_its_stats_path(tmp_path):
    assert person_stats_path(tmp_path) is None
    (tmp_path / STATS_FILENAME).write_bytes(FIXTURE.read_bytes())
    assert person_stats_path(tmp_path) == tmp_path / STATS_FILENAME
    assert np.array_equal(load_person_stats(tmp_path).body_mean, load_person_stats(FIXTURE).body_mean)


def test_stats_written_as_tensors_by_a2p_synth_load(tmp_path):
    path = tmp_path / STATS_FILENAME
    stats = {f"{k}_{m}": torch.ones(d) for k, d in (("pose", 104), ("code", 256)) for m in ("mean", "std")}
    torch.save({**stats, "audio_mean": torch.zeros(2), "audio_std_flat": torch.ones(2)}, path)
    loaded = load_person_stats(path)
    assert isinstance(loaded, PersonStats) and loaded.audio_std_flat.shape == (2,)
    assert loaded.body_mean.dtype == np.float32


def broken_copy(tmp_path: Path, change) -> Path:
    stored = raw()
    change(stored)
    path = tmp_path / "broken" / STATS_FILENAME
    path.parent.mkdir(exist_ok=True)
    torch.save(stored, path)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("audio_std_flat"), r"without audio_std_flat"),
        (
            lambda d: d.update(pose_mean=d["pose_mean"][:103]),
            r"'pose_mean' must hold 104 numbers, got shape \(103,\)",
        ),
        (lambda d: d.update(code_std=np.zeros((16, 16))), r"'code_std' holds stds that are not positive"),
        (lambda d: d.update(audio_mean=np.array([np.nan, 0.0])), r"'audio_mean' holds non-finite numbers"),
        (
            lambda d: d.update(audio_std_flat=np.ones(3, np.float32)),
            r"'audio_std_flat' must hold 1 \(or 2\) numbers",
        ),
        (
            lambda d: d.update(pose_std=np.arange(104)),
            r"'pose_std' is a ndarray \(int64\), not a float array",
        ),
    ],
    ids=["missing-key", "short-pose", "zero-std", "nan-mean", "three-stds", "integers"],
)
def test_broken_copies_are_refused_naming_the_file(tmp_path, change, message):
    path = broken_copy(tmp_path, change)
    with pytest.raises(DataError, match=rf"{path}: .*{message}"):
        load_person_stats(path)


def test_files_that_are_not_stats_are_refused(tmp_path):
    other = tmp_path / "net_iter300000.pth"
    torch.save({"net": {"encoder.enc.0.weight": torch.zeros(1)}, "optimizer": {}}, other)
    with pytest.raises(
        DataError, match=rf"{other}: not a data_stats.pth .* it holds net, optimizer, none of pose_mean"
    ):
        load_person_stats(other)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=rf"{junk}: not a data_stats.pth .* that can be read"):
        load_person_stats(junk)
    with pytest.raises(DataError, match=rf"{tmp_path / 'absent'}.*: no such file"):
        load_person_stats(tmp_path / "absent.pth")
    with pytest.raises(DataError, match=rf"{tmp_path / STATS_FILENAME}: no such file"):
        load_person_stats(tmp_path)  # a folder without one
