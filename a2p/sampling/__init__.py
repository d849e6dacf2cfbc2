"""a2p.sampling: one clip's motion from trained networks, shared by training (evaluation) and inference.

`settings` parses sampler settings and seeds the repetitions; `clip.sample_motion` denoises one
clip (conditioning once, CFG rows and repetitions in one batch); `windows` cuts a long clip into
overlapping windows denoised together; `reference` holds the reference's slow loops for benches
and tests.
"""

from a2p.sampling.clip import clip_model, encode_windows, run_setting, sample_motion
from a2p.sampling.settings import (
    DEFAULT_SETTING,
    DEFAULT_SETTING_REASON,
    SamplerSetting,
    repetition_generators,
    setting_schedule,
)
from a2p.sampling.windows import DEFAULT_OVERLAP, WindowedDenoiser, WindowPlan

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_SETTING",
    "DEFAULT_SETTING_REASON",
    "SamplerSetting",
    "WindowPlan",
    "WindowedDenoiser",
    "clip_model",
    "encode_windows",
    "repetition_generators",
    "run_setting",
    "sample_motion",
    "setting_schedule",
]
