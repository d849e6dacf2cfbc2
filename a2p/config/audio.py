"""Which frozen audio featurizer turns stereo 48 kHz audio into 100 Hz features, and its widths.

The widths live here, not in the featurizer modules, so a model config can name its audio width
without importing torch; `a2p.models.audio` reads them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from a2p.constants import AUDIO_CHANNELS

FeaturizerName = Literal["mel", "wav2vec2"]
"""The featurizers `a2p.models.audio.build_featurizer` knows."""

MEL_BINS = 80
"""Mel bands per audio channel of the `mel` featurizer."""

WAV2VEC2_CHANNEL_DIM = 512
"""Width of the wav2vec2 convolutional feature extractor's output per audio channel."""

FEATURE_DIMS: dict[str, int] = {
    "mel": AUDIO_CHANNELS * MEL_BINS,
    "wav2vec2": AUDIO_CHANNELS * WAV2VEC2_CHANNEL_DIM,
}
"""Feature width (both channels side by side) of each featurizer."""

REFERENCE_FEATURE_DIMS: dict[str, int] = {"vq-wav2vec": 1024, "vq-wav2vec+lip": 2038}
"""Width of the reference's audio conditions: vq-wav2vec 2 x 512, plus 338 x 3 lip vertices."""

REFERENCE_FEATURIZERS: dict[str, str] = {
    "face": "vq-wav2vec+lip",
    "body": "vq-wav2vec",
    "guide": "vq-wav2vec",
}
"""The reference's audio condition per model, as an `a2p import-reference` export names it:
vq-wav2vec's extractor (1024 wide, 1998 frames per 600 motion frames) and, for the face, the lip
regressor's vertices too (+1014). Run on a clip (or a window) by `a2p.models.frontend`; they
have no fixed frame rate, so they are never stored in shards."""


@dataclass
class AudioConfig:
    """The featurizer a model is trained with; features are computed once, possibly into the shards."""

    featurizer: FeaturizerName = "mel"
    """Featurizer name: `mel` needs no weights, `wav2vec2` loads its conv feature extractor from `weights`."""
    weights: str | None = None
    """Local weights file (torch state dict `.pt` or `.safetensors`) of a pretrained featurizer; None for `mel`."""

    @property
    def dim(self) -> int:
        """Width of the features this featurizer produces."""
        return FEATURE_DIMS[self.featurizer]
