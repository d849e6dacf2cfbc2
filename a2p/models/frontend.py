"""A clip's audio front end: the features the face, body and guide models each read from its waveform.

Two kinds, chosen by what the exports name (`Exported.config["featurizer"]`):

- `SharedFeatures` (a2p's models: `mel`, `wav2vec2`): the three models read one featurizer's
  100 Hz features, computed once for the whole clip (`featurize_long`); a window's features are
  a slice of the clip's.
- `ReferenceFeatures` (`a2p import-reference` exports): the reference's front end, built from the
  tensors stored in the exports. The waveform is normalized with the person's audio stats
  (`(w - audio_mean) / audio_std_flat`), each model's vq-wav2vec extractor reads it (1998 frames
  per 600 motion frames), and the face's condition adds the lip regressor's vertices (1024 + 1014).
  Extractors with the same weights run once (the released files carry the same vq-wav2vec).
  These features have no fixed rate and the reference's models only ever saw a clip of at most
  600 frames featurized alone, so a long clip's windows are featurized one by one (`per_window`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from a2p.config.audio import REFERENCE_FEATURIZERS
from a2p.constants import CROP_MAX_FRAMES, SAMPLES_PER_FRAME
from a2p.errors import A2PError
from a2p.models.audio import Featurizer, build_featurizer, featurize_long
from a2p.models.export import Exported
from a2p.models.lip import LIP_DIM, LipRegressor, lip_condition, lip_regressor_from_state
from a2p.models.torch_files import FAIRSEQ_GLOBALS, load_torch_file
from a2p.models.wav2vec1 import (
    VQ_WAV2VEC,
    WAV2VEC_LARGE,
    VQWav2VecFeatures,
    build_wav2vec1,
    vq_wav2vec_frames,
)
from a2p.models.wav2vec1_files import load_vq_wav2vec_features, vq_wav2vec_features_from_state

ROLES = ("face", "body", "guide")
"""The models that read audio, in the order their features are computed."""
LIP_PREFIX = "lip_model."
"""The lip regressor's tensors in a face export's front end (the released face file's names)."""
AUDIO_PREFIX = "audio_model."
"""vq-wav2vec's tensors in an export's front end (the released files' names)."""
RESAMPLER_KEY = "audio_resampler.kernel"
"""The 48 -> 16 kHz resampling kernel stored beside them."""


class FrontEnd(nn.Module):
    """Stereo 48 kHz audio (B, S, 2) -> {role: (B, F, C)} for the face, body and guide."""

    per_window: bool = False
    """A long clip's windows are featurized one by one, each as a clip (else sliced from the clip's)."""
    max_frames: int | None = None
    """The longest clip or window (motion frames) the models can read, if they are limited."""

    def forward(self, audio: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def featurizer_for(self, role: str) -> Callable[[Tensor], Tensor]:
        """`audio -> features` of one model, recomputing everything (the reference's way, for benches)."""
        return lambda audio: self(audio)[role]


class SharedFeatures(FrontEnd):
    """One a2p featurizer whose features all three models read."""

    def __init__(self, featurizer: Featurizer) -> None:
        super().__init__()
        self.featurizer = featurizer

    def forward(self, audio: Tensor) -> dict[str, Tensor]:
        with torch.autocast(audio.device.type, enabled=False):  # features in float32 even under --bf16
            features = featurize_long(self.featurizer, audio)
        return dict.fromkeys(ROLES, features)


class ReferenceFeatures(FrontEnd):
    """The reference's front end: person-normalized waveform -> vq-wav2vec per model (+ lip for the face)."""

    per_window = True

    def __init__(
        self,
        extractors: Mapping[str, VQWav2VecFeatures],
        lip: LipRegressor | None,
        lip_roles: tuple[str, ...],
        audio_mean: Tensor,
        audio_std: Tensor,
        max_frames: int,
    ) -> None:
        super().__init__()
        self.max_frames = max_frames
        unique: list[VQWav2VecFeatures] = []
        for module in extractors.values():
            if not any(module is seen for seen in unique):
                unique.append(module)
        self.extractors = nn.ModuleList(unique)
        self.role_extractor = {role: next(i for i, m in enumerate(unique) if m is module)
                               for role, module in extractors.items()}  # fmt: skip
        self.lip = lip
        self.lip_roles = lip_roles
        self.register_buffer("audio_mean", audio_mean.float().reshape(-1), persistent=False)
        self.register_buffer("audio_std", audio_std.float().reshape(-1), persistent=False)

    @classmethod
    def random(cls) -> ReferenceFeatures:
        """The reference's front end with torch's random init and unit audio stats (for benches:
        the cost does not depend on the weights)."""
        extractor = VQWav2VecFeatures(
            build_wav2vec1(replace(VQ_WAV2VEC, aggregator_layers=())).feature_extractor
        )
        lip = LipRegressor(build_wav2vec1(WAV2VEC_LARGE))
        extractors = dict.fromkeys(ROLES, extractor)
        return cls(extractors, lip, ("face",), torch.zeros(2), torch.ones(1), CROP_MAX_FRAMES)

    def forward(self, audio: Tensor) -> dict[str, Tensor]:
        return self.features(audio, ROLES)

    def featurizer_for(self, role: str) -> Callable[[Tensor], Tensor]:
        return lambda audio: self.features(audio, (role,))[role]

    def features(
        self, audio: Tensor, roles: tuple[str, ...], valid_samples: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The features of `roles`, each extractor (and the lip regressor) run at most once.

        `valid_samples` (B,): samples of each row before its padding, which is zero after the
        normalization, as the reference pads its normalized training crops (data_loaders/data.py
        `_pad_sequence`); None: every sample is audio.
        """
        frames = audio.shape[1] // SAMPLES_PER_FRAME  # the reference reads whole motion frames
        if frames < 1:
            raise ValueError(
                f"need at least one motion frame ({SAMPLES_PER_FRAME} samples), got {audio.shape[1]}"
            )
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            x = (audio[:, : frames * SAMPLES_PER_FRAME].float() - self.audio_mean) / self.audio_std
            if valid_samples is not None:
                position = torch.arange(x.shape[1], device=x.device)
                x = x * (position[None, :] < valid_samples.to(x.device)[:, None]).unsqueeze(-1)
            vq: dict[int, Tensor] = {}
            lip: Tensor | None = None
            out = {}
            for role in roles:
                index = self.role_extractor[role]
                if index not in vq:
                    vq[index] = self.extractors[index](x)
                features = vq[index]
                if role in self.lip_roles:
                    assert self.lip is not None
                    if lip is None:
                        lip = lip_condition(self.lip, x, features.shape[1])
                    features = torch.cat((features, lip), dim=-1)
                out[role] = features
        return out


def build_front_end(exports: Mapping[str, Exported], paths: Mapping[str, str]) -> FrontEnd:
    """The front end the face, body and guide exports (`exports[role]`, read from `paths[role]`)
    were made for, on the CPU; a mix of kinds, missing or mismatched tensors are refused by file."""
    names = {role: exports[role].config.get("featurizer", "mel") for role in ROLES}
    reference = [role for role in ROLES if names[role] in REFERENCE_FEATURIZERS.values()]
    if not reference:
        if len(set(names.values())) != 1:
            raise A2PError(f"the face, body and guide models use different featurizers: {names}")
        return SharedFeatures(build_featurizer(names["face"]))
    if len(reference) != len(ROLES):
        mixed = {role: f"{names[role]} ({paths[role]})" for role in ROLES}
        raise A2PError(
            f"a2p models and `a2p import-reference` models cannot be sampled together: their featurizers are {mixed}"
        )
    return _reference_front_end(exports, paths, names)


def _reference_front_end(
    exports: Mapping[str, Exported], paths: Mapping[str, str], names: Mapping[str, str]
) -> ReferenceFeatures:
    audio_mean, audio_std = _audio_units(exports, paths)
    extractors: dict[str, VQWav2VecFeatures] = {}
    built: dict[str, VQWav2VecFeatures] = {}  # by the digest of their tensors
    lip, lip_roles = None, []
    for role in ROLES:
        source = f"{paths[role]} (front end)"
        vq_tensors, lip_tensors = split_lip(exports[role].frontend or {})
        digest = _digest(vq_tensors)
        if digest not in built:
            built[digest] = vq_wav2vec_features_from_state(vq_tensors, source)
        extractors[role] = built[digest]
        width = extractors[role].dim
        if reads_lip(names[role], lip_tensors, source):
            if lip is not None:
                raise A2PError(f"{paths[role]}: only one model may read the lip regressor")
            lip = lip_regressor_from_state(lip_tensors, source)
            lip_roles.append(role)
            width += LIP_DIM
        expected = exports[role].model.config.audio_dim
        if width != expected:
            raise A2PError(
                f"{paths[role]}: its front end ({names[role]}) makes {width}-wide features, the model reads {expected}"
            )
    # the reference's models hold one null audio token per feature position (1998: 600 frames)
    tokens = min(exports[role].model.config.null_audio_tokens for role in ROLES)
    max_frames = max(f for f in range(1, tokens + 1) if vq_wav2vec_frames(f) <= tokens)
    return ReferenceFeatures(extractors, lip, tuple(lip_roles), audio_mean, audio_std, max_frames)


def reference_front_end(
    tensors: Mapping[str, Tensor],
    featurizer: str,
    role: str,
    audio_mean: Tensor,
    audio_std: Tensor,
    source: str,
) -> ReferenceFeatures:
    """The front end of one model (`role`) from its reference-named tensors (`read_reference_front_end`)."""
    vq_tensors, lip_tensors = split_lip(tensors)
    extractor = vq_wav2vec_features_from_state(vq_tensors, source)
    lip = (
        lip_regressor_from_state(lip_tensors, source) if reads_lip(featurizer, lip_tensors, source) else None
    )
    lip_roles = (role,) if lip is not None else ()
    return ReferenceFeatures({role: extractor}, lip, lip_roles, audio_mean, audio_std, CROP_MAX_FRAMES)


def read_reference_front_end(
    featurizer: str, weights: str | None, lip_weights: str | None
) -> dict[str, Tensor]:
    """The tensors of a `featurizer` front end (`REFERENCE_FEATURIZERS`), named as in a released
    file (`audio_model.*`, `audio_resampler.kernel`, `lip_model.*`), as an export stores them.

    `weights`: fairseq's `vq-wav2vec.pt` or a released face/body/guide checkpoint; `lip_weights`
    (the `+lip` kind only; None: `weights`): the regressor's `iter-0200000.pt` or the released face
    checkpoint. `reference_front_end` builds the front end from them, strictly.
    """
    if featurizer not in REFERENCE_FEATURIZERS.values():
        raise A2PError(
            f"{featurizer!r} is not one of the reference's front ends {sorted(set(REFERENCE_FEATURIZERS.values()))}"
        )
    if not weights:
        raise A2PError(
            f"the {featurizer!r} front end needs the frozen vq-wav2vec's weights: fairseq's vq-wav2vec.pt "
            "or a released audio2photoreal checkpoint (train: --audio-weights FILE)"
        )
    tensors = _vq_wav2vec_tensors(Path(weights))
    if featurizer.endswith("+lip"):
        tensors |= _lip_tensors(Path(lip_weights or weights))
    elif lip_weights:
        raise A2PError(
            f"{lip_weights}: a lip regressor was given, but a {featurizer!r} model does not read one"
        )
    return tensors


def _vq_wav2vec_tensors(path: Path) -> dict[str, Tensor]:
    """vq-wav2vec's extractor and resampler kernel, reference-named, from a fairseq asset or a release."""
    stored = load_torch_file(
        path, allow=FAIRSEQ_GLOBALS, what="vq-wav2vec.pt or an audio2photoreal checkpoint"
    )
    if "args" in stored and isinstance(stored.get("model"), Mapping):
        asset = load_vq_wav2vec_features(path)  # the asset's own flags, from its args
        tensors = {f"{AUDIO_PREFIX}{k}": v for k, v in asset.feature_extractor.state_dict().items()}
        tensors[RESAMPLER_KEY] = asset.resampler.kernel
        rebuilt = vq_wav2vec_features_from_state(tensors, str(path))  # the flags every release has
        probe = torch.randn(1, 3 * SAMPLES_PER_FRAME, 2, generator=torch.Generator().manual_seed(0))
        if not torch.equal(asset(probe), rebuilt(probe)):
            raise A2PError(f"{path}: its args describe another feature extractor than vq-wav2vec's")
        return tensors
    state = stored.get("model_state_dict", stored)
    if not isinstance(state, Mapping):
        raise A2PError(f"{path}: 'model_state_dict' is a {type(state).__name__}, not a state dict")
    tensors = {
        k: v
        for k, v in state.items()
        if k.startswith(f"{AUDIO_PREFIX}feature_extractor.") or k == RESAMPLER_KEY
    }
    if not tensors:
        raise A2PError(
            f"{path}: holds no vq-wav2vec ('{AUDIO_PREFIX}feature_extractor.*'): not vq-wav2vec.pt or a released checkpoint"
        )
    return tensors


def _lip_tensors(path: Path) -> dict[str, Tensor]:
    """The lip regressor's tensors under `lip_model.`, from `iter-0200000.pt` or the released face file."""
    stored = load_torch_file(path, what="the lip regressor (iter-0200000.pt) or the face checkpoint")
    if isinstance(stored.get("model_state_dict"), Mapping):
        return {f"{LIP_PREFIX}{k}": v for k, v in stored["model_state_dict"].items()}
    tensors = {k: v for k, v in stored.items() if k.startswith(LIP_PREFIX)}
    if not tensors:
        raise A2PError(
            f"{path}: holds neither 'model_state_dict' (iter-0200000.pt) nor '{LIP_PREFIX}*' tensors (the face checkpoint)"
        )
    return tensors


def split_lip(tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the vq-wav2vec tensors, the lip regressor's without their `lip_model.` prefix)."""
    vq = {k: v for k, v in tensors.items() if not k.startswith(LIP_PREFIX)}
    lip = {k.removeprefix(LIP_PREFIX): v for k, v in tensors.items() if k.startswith(LIP_PREFIX)}
    return vq, lip


def reads_lip(featurizer: str, lip_tensors: Mapping[str, Tensor], source: str) -> bool:
    """Whether a model with `featurizer` reads the lip regressor, refusing missing or stray lip tensors."""
    wanted = featurizer.endswith("+lip")
    if wanted and not lip_tensors:
        raise A2PError(
            f"{source}: {featurizer!r} needs the lip regressor, but no '{LIP_PREFIX}*' tensors are stored"
        )
    if lip_tensors and not wanted:
        raise A2PError(
            f"{source}: holds {len(lip_tensors)} lip regressor tensors ('{LIP_PREFIX}*'), which a {featurizer!r} model does not read"
        )
    return wanted


def check_reference_front_end(tensors: Mapping[str, Tensor], featurizer: str, source: str) -> None:
    """Build the front end a released file stores (`audio_model.*`, `audio_resampler.kernel`,
    `lip_model.*`), strictly, so a file missing any of it is refused before anything is written."""
    vq_tensors, lip_tensors = split_lip(tensors)
    vq_wav2vec_features_from_state(vq_tensors, source)
    if reads_lip(featurizer, lip_tensors, source):
        lip_regressor_from_state(lip_tensors, source)


def _audio_units(exports: Mapping[str, Exported], paths: Mapping[str, str]) -> tuple[Tensor, Tensor]:
    """The person's waveform stats, the same in every export that reads audio."""
    units = {}
    for role in ROLES:
        stats = exports[role].stats or {}
        if "audio_mean" not in stats or "audio_std_flat" not in stats:
            raise A2PError(
                f"{paths[role]}: carries no audio units (audio_mean, audio_std_flat); re-run `a2p import-reference`"
            )
        units[role] = (tuple(stats["audio_mean"]), tuple(stats["audio_std_flat"]))
    if len(set(units.values())) != 1:
        raise A2PError(
            "the face, body and guide exports are in different audio units (imported with different data_stats.pth): "
            + ", ".join(f"{paths[role]}" for role in ROLES)
        )
    mean, std = units["face"]
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the tensors' names, shapes, dtypes and bytes, in name order."""
    hasher = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        hasher.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()
