"""a2p's sampled motion in the reference's `results.npy` layout, so the reference's renderer can draw it.

a2p's own output is one `.npz` per clip; this module writes the same motion a second way, as
the pickled dictionaries the reference's `sample/generate.py` saves and its `--plot` path loads.
Facts from github.com/facebookresearch/audio2photoreal at commit 449761e:

- `sample/generate.py` runs one model (face *or* body) per call and saves one dictionary with
  `np.save(<output_dir>/results.npy, ...)` (line 292). Face and body are therefore two files,
  each with the same five keys (`_generate_sequences`, lines 110-152); rendering loads the body
  file through `--pose_codes` and the face file through `--face_codes` with
  `np.load(..., allow_pickle=True).item()` (lines 165, 295).
- `motions`: (N, C, 1, T) float64 - the sampler's shape `(batch, nfeats, 1, T)` (line 89),
  de-normalized (lines 98-100; float32 samples times the float64 statistics of
  `data_stats.pth` promote to float64). C is 256 for the face, 104 for the body.
- `gt`: the ground-truth motion of the same clip, laid out like `motions` (lines 103-105).
- `audio`: (N, S, 2) float32 waveform at 48 kHz, S = 1600 * T, one copy per row (line 101;
  collated in `data_loaders/tensors.py` line 45). The renderer checks that both files hold the
  same audio (lines 187-189) and plays `audio[idx, :length * 1600].T` at 1600 * 30 Hz
  (lines 190, 205).
- `lengths`: (N,) int64 valid frames per row (line 142; `tensors.py` line 46).
- `keyframes`: the model's keyframe condition, de-normalized (line 102): `motion[::step]`
  (`data_loaders/data.py` line 238) with step 30 for the body (`add_frame_cond=1`, lines
  146-150), so (N, ceil(T / 30), 104) - the guide poses, replaced by the guide transformer's
  output when sampling with `--resume_trans` (generate.py lines 82-83) - and step 1 for the
  face, so (N, T, 256) ground-truth face codes.
- Rows are repetition-major: row `rep * num_samples + sample` (line 178). Neither
  `num_samples` nor `num_repetitions` is stored; the render command passes them as flags. One
  a2p clip is one sample, so row r is repetition r and the command uses `--num_samples 1
  --num_repetitions <reps>`.

a2p has no ground truth for new audio, so `gt` (and the face's `keyframes`, which are the
ground truth in the reference) are NaN unless the caller passes it; the renderer reads them
only with `--render_gt`, but loads the face's `gt` key always, so the key must exist.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from a2p.constants import AUDIO_CHANNELS, FACE_DIM, FPS, KEYFRAME_INTERVAL, POSE_DIM, SAMPLE_RATE
from a2p.errors import A2PError
from a2p.fileio import write_atomic

RESULT_KEYS = ("motions", "audio", "gt", "lengths", "keyframes")
"""The keys of one reference `results.npy` dictionary."""

PARTS = ("face", "body")
"""The reference writes one results file per model."""


def face_results(
    face: np.ndarray,
    audio: np.ndarray,
    *,
    gt: np.ndarray | None = None,
    fps: int = FPS,
    sample_rate: int = SAMPLE_RATE,
) -> dict[str, np.ndarray]:
    """The reference's face `results.npy` dictionary.

    face: (reps, T, 256) de-normalized codes; audio: (T * sample_rate / fps, 2) waveform;
    gt: optional ground-truth codes, (T, 256) or (reps, T, 256), which are also the face's
    `keyframes` in the reference (NaN when not given).
    """
    _check_width(face, FACE_DIM, "face")
    gt = _ground_truth(gt, face, "face")
    return _results(face, audio, gt, keyframes=gt, fps=fps, sample_rate=sample_rate)


def body_results(
    body: np.ndarray,
    audio: np.ndarray,
    keyframes: np.ndarray,
    *,
    gt: np.ndarray | None = None,
    fps: int = FPS,
    sample_rate: int = SAMPLE_RATE,
) -> dict[str, np.ndarray]:
    """The reference's body `results.npy` dictionary.

    body: (reps, T, 104) de-normalized poses; audio: (T * sample_rate / fps, 2) waveform;
    keyframes: (reps, ceil(T / 30), 104) de-normalized guide poses the body was sampled with;
    gt: optional ground-truth poses, (T, 104) or (reps, T, 104) (NaN when not given).
    """
    _check_width(body, POSE_DIM, "body")
    reps, frames = body.shape[:2]
    expected = (reps, math.ceil(frames / KEYFRAME_INTERVAL), POSE_DIM)
    if keyframes.shape != expected:
        raise A2PError(f"keyframes have shape {keyframes.shape}; expected {expected} for {frames} frames")
    gt = _ground_truth(gt, body, "body")
    return _results(body, audio, gt, keyframes=keyframes, fps=fps, sample_rate=sample_rate)


def reference_results(
    face: np.ndarray,
    body: np.ndarray,
    audio: np.ndarray,
    *,
    keyframes: np.ndarray,
    fps: int = FPS,
    sample_rate: int = SAMPLE_RATE,
    gt_face: np.ndarray | None = None,
    gt_body: np.ndarray | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Both reference dictionaries of one clip, `{"face": ..., "body": ...}`: one file each."""
    if face.shape[:2] != body.shape[:2]:
        raise A2PError(f"face {face.shape} and body {body.shape} differ in repetitions or frames")
    return {
        "face": face_results(face, audio, gt=gt_face, fps=fps, sample_rate=sample_rate),
        "body": body_results(body, audio, keyframes, gt=gt_body, fps=fps, sample_rate=sample_rate),
    }


def write_results_npy(path: str | Path, results: dict[str, np.ndarray]) -> None:
    """Save one results dictionary as the reference does (a pickled 0-d object array), atomically.

    Read it back with `np.load(path, allow_pickle=True).item()`.
    """
    if set(results) != set(RESULT_KEYS):
        raise A2PError(f"a results dictionary has the keys {RESULT_KEYS}, not {tuple(results)}")
    write_atomic(path, lambda f: np.save(f, results, allow_pickle=True))


def write_reference_results(
    directory: str | Path, results: dict[str, dict[str, np.ndarray]]
) -> dict[str, Path]:
    """Write `reference_results(...)` as `face_results.npy` and `body_results.npy` in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in PARTS:
        paths[part] = directory / f"{part}_results.npy"
        write_results_npy(paths[part], results[part])
    return paths


def _results(
    motion: np.ndarray,
    audio: np.ndarray,
    gt: np.ndarray,
    *,
    keyframes: np.ndarray,
    fps: int,
    sample_rate: int,
) -> dict[str, np.ndarray]:
    if (fps, sample_rate) != (FPS, SAMPLE_RATE):
        # The reference's loader and renderer hard-code 1600 samples per frame at 30 fps.
        raise A2PError(
            f"the reference layout is {FPS} fps with audio at {SAMPLE_RATE} Hz, not {fps} fps and {sample_rate} Hz"
        )
    reps, frames = motion.shape[:2]
    samples = frames * (sample_rate // fps)
    if audio.shape != (samples, AUDIO_CHANNELS):
        raise A2PError(
            f"audio has shape {audio.shape}; expected ({samples}, {AUDIO_CHANNELS}) for {frames} frames"
        )
    return {
        "motions": _reference_motion(motion),
        "audio": np.ascontiguousarray(np.broadcast_to(audio.astype(np.float32), (reps, *audio.shape))),
        "gt": _reference_motion(gt),
        "lengths": np.full(reps, frames, dtype=np.int64),
        "keyframes": np.ascontiguousarray(keyframes, dtype=np.float64),
    }


def _ground_truth(gt: np.ndarray | None, motion: np.ndarray, name: str) -> np.ndarray:
    """(reps, T, C) float64 ground truth: one copy per repetition, as the reference stores it; NaN if none."""
    if gt is None:
        return np.full(motion.shape, np.nan)
    if gt.shape not in (motion.shape[1:], motion.shape):
        raise A2PError(
            f"{name} ground truth has shape {gt.shape}; expected {motion.shape[1:]} or {motion.shape}"
        )
    return np.broadcast_to(gt.astype(np.float64), motion.shape)


def _reference_motion(motion: np.ndarray) -> np.ndarray:
    """(N, T, C) -> the sampler's (N, C, 1, T) float64 layout."""
    return np.ascontiguousarray(motion.astype(np.float64).transpose(0, 2, 1)[:, :, None, :])


def _check_width(motion: np.ndarray, width: int, name: str) -> None:
    if motion.ndim != 3 or motion.shape[2] != width or motion.shape[1] == 0:
        raise A2PError(f"{name} has shape {motion.shape}; expected (reps, T, {width})")
