"""`a2p sample`'s extra outputs: the reference's results.npy layout and the quick-look figure."""

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf

from a2p.cli.sample import main as sample_main
from a2p.errors import A2PError
from a2p.inference import figures
from a2p.inference.figures import MAX_POINTS, clip_figure, save_figure
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


PANEL_YLABELS = (
    "audio RMS\n(full scale)",
    "body speed\n(rad/frame)",
    "face speed\n(code units/frame)",
    "body channel 0\n(rad)",
    "body channel 1\n(rad)",
    "body channel 2\n(rad)",
)


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def describe(figure) -> dict:
    """What a reader of the figure sees, read from its artists (before it is saved and released)."""
    axes = figure.get_axes()
    return {
        "title": figure.get_suptitle(),
        "ylabels": [ax.get_ylabel() for ax in axes],
        "xlabel": axes[-1].get_xlabel(),
        "xlims": [ax.get_xlim() for ax in axes],
        "shared_time_axis": all(ax.get_shared_x_axes().joined(ax, axes[-1]) for ax in axes),
        "legends": [legend_texts(ax) for ax in axes],
        "lines": [len(ax.get_lines()) for ax in axes],
        "envelope": [line.get_ydata().copy() for line in axes[0].get_lines()],
        "times": axes[0].get_lines()[0].get_xdata().copy(),
        "size_px": tuple(int(round(v)) for v in figure.get_size_inches() * figure.dpi),
    }


def assert_readable(seen: dict, audio: np.ndarray, reps: int, title: str) -> None:
    """Six labelled panels on one time axis in seconds spanning the clip, legends naming the
    speakers and every repetition, and the envelope of `audio` (S, 2) at 48 kHz in the audio panel."""
    frames = audio.shape[0] // SPF
    assert seen["title"] == title
    assert seen["ylabels"] == list(PANEL_YLABELS)
    assert seen["xlabel"] == "time (s)" and seen["shared_time_axis"]
    assert seen["xlims"] == [pytest.approx((0.0, frames / 30))] * len(PANEL_YLABELS)
    assert seen["legends"] == [["this person", "partner"], *[[f"rep {r}" for r in range(reps)]] * 5]
    assert seen["lines"] == [2, *[reps] * 5]
    rms = np.sqrt((audio.astype(np.float64).reshape(frames, SPF, 2) ** 2).mean(axis=1))  # (T, 2)
    for channel, envelope in enumerate(seen["envelope"]):
        np.testing.assert_allclose(envelope, rms[:, channel], rtol=1e-5)
    np.testing.assert_allclose(seen["times"], np.arange(frames) / 30)


def assert_png_of(path, size_px) -> None:
    """A PNG that matplotlib decodes, of the figure's size, with text and curves drawn on it."""
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(path)  # (H, W, 4) floats in [0, 1]
    width, height = size_px
    assert image.shape[:2] == (height, width)
    rgb = image[:, :, :3]
    assert (rgb < 0.5).mean() > 0.005  # dark pixels: not an empty canvas
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10  # several colours, not one flat fill


def test_clip_figure_is_labelled_and_saves_as_a_png(clip, tmp_path):
    figure = clip_figure(clip["audio"], clip["face"], clip["body"], 30, 48_000, title="a — ddim5")
    seen = describe(figure)
    assert_readable(seen, clip["audio"], REPS, "a — ddim5")
    body_speed = figure.get_axes()[1].get_lines()[1].get_ydata()  # rep 1
    speed = np.linalg.norm(np.diff(clip["body"][1].astype(np.float64), axis=0), axis=1)
    np.testing.assert_allclose(body_speed, [speed[0], *speed], rtol=1e-5)

    save_figure(figure, tmp_path / "clip.png")
    assert [p.name for p in tmp_path.iterdir()] == ["clip.png"]  # no temporary file left behind
    assert_png_of(tmp_path / "clip.png", seen["size_px"])
    assert not figure.get_axes()  # released once written


def test_sample_plot_writes_a_readable_figure_of_the_clip(model_args, clip, tmp_path, monkeypatch):
    wav = tmp_path / "talk.wav"
    sf.write(wav, clip["audio"], 48_000, subtype="FLOAT")  # 45 frames, read back exactly
    saved = []

    def recording_save(figure, path):
        saved.append((describe(figure), path))
        save_figure(figure, path)

    monkeypatch.setattr(figures, "save_figure", recording_save)
    out = tmp_path / "out"
    args = [str(wav), *model_args, "--out", str(out), "--reps", "3", "--sampler", "ddim3", "--plot"]
    assert sample_main(args) == 0
    [(seen, path)] = saved
    assert path == out / "talk.png"
    assert_readable(seen, clip["audio"], 3, "talk — ddim3")
    assert_png_of(path, seen["size_px"])


def test_silent_audio_gives_a_flat_envelope_from_zero(clip):
    silent = np.zeros_like(clip["audio"])
    audio = clip_figure(silent, clip["face"], clip["body"], 30, 48_000, title="silent").get_axes()[0]
    for line in audio.get_lines():
        assert not np.any(line.get_ydata())
    assert audio.get_ylim()[0] == 0


def test_long_clips_are_decimated_and_keep_their_peaks():
    frames, sample_rate = 10 * 60 * 30, 300  # 10 minutes; 10 audio samples per frame keeps it small
    body = np.zeros((2, frames, 104), dtype=np.float32)
    body[0, 12_345:, 0] = 5.0  # one jump: a single-frame spike of the body speed
    face = np.zeros((2, frames, 256), dtype=np.float32)
    audio = np.zeros((frames * 10, 2), dtype=np.float32)
    figure = clip_figure(audio, face, body, 30, sample_rate, title="long — ddim5")
    axes = figure.get_axes()
    assert axes[-1].get_xlim() == pytest.approx((0.0, 600.0))
    for ax in axes:
        for line in ax.get_lines():
            assert len(line.get_xdata()) <= MAX_POINTS
    spiky, calm = axes[1].get_lines()
    assert spiky.get_ydata().max() == pytest.approx(5.0) and not calm.get_ydata().any()
    peak = spiky.get_xdata()[np.argmax(spiky.get_ydata())]
    assert abs(peak - 12_345 / 30) < 600 / (MAX_POINTS // 2)  # within the peak's bin
    channel = axes[3].get_lines()[0].get_ydata()
    assert channel.min() == 0 and channel.max() == 5.0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: {**c, "audio": c["audio"][:-1]}, "audio has shape"),
        (lambda c: {**c, "face": c["face"][:1]}, "same reps and T"),
        (lambda c: {**c, "body": c["body"][0]}, r"must be \(reps, T, D\)"),
        (lambda c: {**c, "face": np.where(c["face"] > 2, np.nan, c["face"])}, "face holds NaN"),
    ],
)
def test_clips_that_cannot_be_drawn_are_errors(clip, change, message):
    bad = change(clip)
    with pytest.raises(A2PError, match=message):
        clip_figure(bad["audio"], bad["face"], bad["body"], 30, 48_000, title="bad")


def test_body_channels_out_of_range_and_odd_rates_are_errors(clip):
    with pytest.raises(A2PError, match=r"body_channels \(0, 104\)"):
        clip_figure(clip["audio"], clip["face"], clip["body"], 30, 48_000, title="x", body_channels=(0, 104))
    with pytest.raises(A2PError, match="at 7 fps and 48000 Hz"):
        clip_figure(clip["audio"], clip["face"], clip["body"], 7, 48_000, title="x")
