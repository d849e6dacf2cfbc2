"""`a2p sample`'s extra outputs: the reference's results.npy layout and the PNG quick-look plot."""

import struct
import zlib

import numpy as np
import pytest

from a2p.errors import A2PError
from a2p.inference.plots import (
    AUDIO_RGB,
    AXIS_HEIGHT,
    BACKGROUND_RGB,
    PANEL_HEIGHT,
    PNG_SIGNATURE,
    motion_plot,
    panel_rows,
    write_png,
)
from a2p.inference.reference_results import (
    RESULT_KEYS,
    face_results,
    reference_results,
    write_reference_results,
    write_results_npy,
)

REPS, FRAMES, SPF = 2, 45, 1600
KEYFRAMES = 2  # ceil(45 / 30)

# The layout of github.com/facebookresearch/audio2photoreal sample/generate.py (`_generate_sequences`,
# saved by `np.save(.../results.npy)`), one file per model: key -> (shape, dtype) for N = reps rows.
REFERENCE_FACE = {
    "motions": ((REPS, 256, 1, FRAMES), np.float64),
    "audio": ((REPS, FRAMES * SPF, 2), np.float32),
    "gt": ((REPS, 256, 1, FRAMES), np.float64),
    "lengths": ((REPS,), np.int64),
    "keyframes": ((REPS, FRAMES, 256), np.float64),  # motion[::1]: the ground-truth face
}
REFERENCE_BODY = {
    "motions": ((REPS, 104, 1, FRAMES), np.float64),
    "audio": ((REPS, FRAMES * SPF, 2), np.float32),
    "gt": ((REPS, 104, 1, FRAMES), np.float64),
    "lengths": ((REPS,), np.int64),
    "keyframes": ((REPS, KEYFRAMES, 104), np.float64),  # motion[::30]: the guide poses
}


@pytest.fixture
def clip():
    rng = np.random.default_rng(0)
    return {
        "face": rng.standard_normal((REPS, FRAMES, 256)).astype(np.float32),
        "body": rng.standard_normal((REPS, FRAMES, 104)).astype(np.float32),
        "keyframes": rng.standard_normal((REPS, KEYFRAMES, 104)).astype(np.float32),
        "audio": (0.1 * rng.standard_normal((FRAMES * SPF, 2))).astype(np.float32),
    }


def test_results_have_the_reference_layout(clip):
    results = reference_results(clip["face"], clip["body"], clip["audio"], keyframes=clip["keyframes"])
    assert set(results) == {"face", "body"}
    for part, layout in (("face", REFERENCE_FACE), ("body", REFERENCE_BODY)):
        assert tuple(results[part]) == RESULT_KEYS == tuple(layout)
        for key, (shape, dtype) in layout.items():
            assert results[part][key].shape == shape, (part, key)
            assert results[part][key].dtype == dtype, (part, key)
        # What the reference's renderer does with row `rep` (generate.py `_render_pred`).
        for rep in range(REPS):
            length = results[part]["lengths"][rep]
            motion = results[part]["motions"][rep].transpose(2, 0, 1)[:length].squeeze(-1)
            np.testing.assert_array_equal(motion, clip[part][rep])
            np.testing.assert_array_equal(results[part]["audio"][rep, : length * SPF].T, clip["audio"].T)
        assert np.isnan(results[part]["gt"]).all()  # no ground truth for new audio
    np.testing.assert_array_equal(results["body"]["keyframes"], clip["keyframes"])
    np.testing.assert_array_equal(results["face"]["audio"], results["body"]["audio"])


def test_ground_truth_is_repeated_per_repetition_and_is_the_face_keyframes(clip):
    gt = clip["face"][0]
    results = face_results(clip["face"], clip["audio"], gt=gt)
    for rep in range(REPS):
        np.testing.assert_array_equal(results["gt"][rep, :, 0, :].T, gt)
        np.testing.assert_array_equal(results["keyframes"][rep], gt)


def test_layout_mismatches_are_errors(clip):
    with pytest.raises(A2PError, match="audio"):
        reference_results(clip["face"], clip["body"], clip["audio"][:-1], keyframes=clip["keyframes"])
    with pytest.raises(A2PError, match="keyframes"):
        reference_results(clip["face"], clip["body"], clip["audio"], keyframes=clip["keyframes"][:, :1])
    with pytest.raises(A2PError, match="fps"):
        reference_results(clip["face"], clip["body"], clip["audio"], keyframes=clip["keyframes"], fps=25)
    with pytest.raises(A2PError, match="keys"):
        write_results_npy("unused.npy", {"motions": clip["body"]})


def test_results_npy_round_trips(clip, tmp_path):
    results = reference_results(clip["face"], clip["body"], clip["audio"], keyframes=clip["keyframes"])
    paths = write_reference_results(tmp_path, results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body_results.npy", "face_results.npy"]
    for part, path in paths.items():
        loaded = np.load(path, allow_pickle=True).item()  # as the reference loads --face_codes / --pose_codes
        assert tuple(loaded) == RESULT_KEYS
        for key in RESULT_KEYS:
            np.testing.assert_array_equal(loaded[key], results[part][key])
            assert loaded[key].dtype == results[part][key].dtype


def read_png(path) -> np.ndarray:
    """A reader for exactly what write_png writes: 8-bit RGB, filter 0, one or more IDAT chunks."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks[kind] = chunks.get(kind, b"") + payload
        pos += 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[b"IHDR"]
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()  # filter type 0 on every row
    return rows[:, 1:].reshape(height, width, 3)


def test_png_decodes_back_to_the_array(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(read_png(tmp_path / "x.png"), image)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary file left behind
    with pytest.raises(A2PError):
        write_png(tmp_path / "y.png", image.astype(np.float32))


def painted(panel: np.ndarray) -> np.ndarray:
    return (panel != BACKGROUND_RGB).any(axis=-1)


def test_motion_plot_draws_every_panel(clip, tmp_path):
    image = motion_plot(clip["audio"], clip["face"], clip["body"], 30, 48_000)
    panels = panel_rows(6)  # audio, body speed, face speed, body channels 0-2
    assert image.shape == (6 * (PANEL_HEIGHT + 1) + AXIS_HEIGHT, FRAMES, 3)
    assert image.dtype == np.uint8
    for rows in panels:
        assert painted(image[rows]).any(axis=0).all()  # something in every column of every panel
    assert {tuple(c) for c in image[panels[0]].reshape(-1, 3)} >= set(AUDIO_RGB)
    write_png(tmp_path / "clip.png", image)
    np.testing.assert_array_equal(read_png(tmp_path / "clip.png"), image)


def test_silent_audio_gives_a_flat_envelope(clip):
    silent = np.zeros_like(clip["audio"])
    audio_panel = motion_plot(silent, clip["face"], clip["body"], 30, 48_000)[panel_rows(1)[0]]
    rows = np.flatnonzero(painted(audio_panel).any(axis=1))
    assert len(rows) == 1
    assert painted(audio_panel[rows[0]]).all()


def test_long_clips_are_binned_and_keep_their_peaks():
    frames = 3000
    body = np.zeros((1, frames, 104), dtype=np.float32)
    body[0, 1234:, 0] = 5.0  # one jump: a single-frame spike of the body speed
    face = np.zeros((1, frames, 256), dtype=np.float32)
    audio = np.zeros((frames * SPF, 2), dtype=np.float32)
    image = motion_plot(audio, face, body, 30, 48_000, body_channels=(), max_width=1000)
    assert image.shape[1] == 1000
    speed = painted(image[panel_rows(2)[1]])
    spike_column = 1234 * 1000 // frames
    assert speed[:, spike_column].sum() > PANEL_HEIGHT // 2  # the spike reaches the top of its panel
    assert speed.any(axis=0).all()
