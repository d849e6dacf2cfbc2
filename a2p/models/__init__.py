"""Networks: frozen audio featurizers, shared layers and the face/body diffusion denoisers."""

from a2p.models.audio import (
    Featurizer,
    build_featurizer,
    featurize_long,
    featurizer_names,
    register_featurizer,
)
from a2p.models.denoiser import Condition, ConditionInputs, Denoiser, build_denoiser

__all__ = [
    "Condition",
    "ConditionInputs",
    "Denoiser",
    "Featurizer",
    "build_denoiser",
    "build_featurizer",
    "featurize_long",
    "featurizer_names",
    "register_featurizer",
]
