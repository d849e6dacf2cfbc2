"""Where a task's audio features come from: the shards, or a frozen front end run on the crop's audio.

Features stored by `a2p data build --features` are read as they are; otherwise the featurizer runs
under no_grad on each batch's audio. It is not part of the model or its checkpoint: it is
deterministic, or loaded from the file the config names. Shards whose features do not fit the
model are refused before any compute.

The reference's front ends (`vq-wav2vec`, `vq-wav2vec+lip`: `a2p.models.frontend`) run on every
crop as the reference's training does: the waveform in the person's units (the manifest's
`person_stats`, from its data_stats.pth), zero after the crop as the reference pads its
normalized crops, all 600 frames featurized (1998 vectors). The export stores their tensors
beside the model, so `a2p sample` runs the same front end.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from a2p.config.audio import FEATURE_DIMS, REFERENCE_FEATURE_DIMS
from a2p.config.train import Units
from a2p.constants import FEATURE_RATE_HZ, SAMPLES_PER_FRAME
from a2p.data.format import features_frames, load_manifest
from a2p.errors import ConfigError
from a2p.models.frontend import ReferenceFeatures, read_reference_front_end, reference_front_end
from a2p.training.tasks import ResumableIterable, TaskContext

logger = logging.getLogger(__name__)


class AudioInputs:
    """Audio features of training batches for a model (`role`) that expects width `width`."""

    def __init__(
        self,
        featurizer: str,
        weights: str | None,
        width: int,
        width_key: str,
        role: str,
        lip_weights: str | None = None,
    ) -> None:
        self.featurizer_name, self.weights, self.width, self.width_key = featurizer, weights, width, width_key
        self.role, self.lip_weights = role, lip_weights
        self.reference = featurizer in REFERENCE_FEATURE_DIMS
        self.shards_have_features: bool | None = None
        self._featurizer: nn.Module | None = None
        self._front_end_tensors: dict[str, Tensor] | None = None

    def check_shards(self, shard_dir: str, units: Units = "train") -> None:
        """Refuse shards whose features (or the configured featurizer) do not fit the model."""
        manifest = load_manifest(shard_dir)
        if self.reference:
            self._check_reference(manifest, shard_dir, units)
        elif manifest.features:
            self.shards_have_features = True
            stored = int(manifest.features.get("dim", -1))
            if stored != self.width:
                raise ConfigError(
                    f"{shard_dir}: shards carry {manifest.features.get('name')} features of width "
                    f"{stored}, but {self.width_key} is {self.width}"
                )
        else:
            self.shards_have_features = False
            expected = FEATURE_DIMS.get(self.featurizer_name)
            if expected != self.width:
                raise ConfigError(
                    f"task.featurizer {self.featurizer_name!r} makes features of width {expected}, "
                    f"but {self.width_key} is {self.width}"
                )

    def _check_reference(self, manifest: Any, shard_dir: str, units: Units) -> None:
        """The reference's front end: its width, the person's units, and its weights, loaded now."""
        expected = REFERENCE_FEATURE_DIMS[self.featurizer_name]
        if expected != self.width:
            raise ConfigError(
                f"task.featurizer {self.featurizer_name!r} makes features of width {expected}, "
                f"but {self.width_key} is {self.width}"
            )
        chosen, stats = manifest.units_stats(units, f"{shard_dir}/manifest.json")
        if chosen != "person":
            raise ConfigError(
                f"{shard_dir}: the {self.featurizer_name!r} front end reads the waveform in the person's "
                f"units, but train.units={units!r} reads the train split's; use train.units=auto or person "
                "on shards built from a folder with the person's data_stats.pth"
            )
        if manifest.features:
            logger.info(
                "%s: the stored %s features are not read: the %s front end runs on each crop's audio",
                shard_dir, manifest.features.get("name"), self.featurizer_name,
            )  # fmt: skip
        self.shards_have_features = False
        tensors = self.front_end_tensors()
        self._featurizer = reference_front_end(
            tensors, self.featurizer_name, self.role,
            torch.tensor(stats["audio_mean"]), torch.tensor(stats["audio_std_flat"]), str(self.weights),
        )  # fmt: skip

    def front_end_tensors(self) -> dict[str, Tensor] | None:
        """The reference front end's tensors as an export stores them (None for a2p's featurizers)."""
        if not self.reference:
            return None
        if self._front_end_tensors is None:
            self._front_end_tensors = read_reference_front_end(
                self.featurizer_name, self.weights, self.lip_weights
            )
        return self._front_end_tensors

    def loader(
        self,
        ctx: TaskContext,
        task: str,
        num_workers: int,
        min_frames: int | None = None,
    ) -> ResumableIterable:
        """This rank's training loader over `ctx.data`, decoding audio only when features are missing.

        `min_frames`: the shortest crop (None: the loader's default random lengths).
        """
        from a2p.data import build_train_loader

        if not ctx.data:
            raise ConfigError(f"the {task} task needs --data SHARDS/PERSON")
        self.check_shards(ctx.data, ctx.units)
        return build_train_loader(
            ctx.data,
            ctx.batch_size,
            seed=ctx.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            num_workers=num_workers,
            audio=not self.shards_have_features,
            features=True,
            units=ctx.units,
            **({} if min_frames is None else {"min_frames": min_frames}),
        )

    def __call__(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        """The batch's features (B, F, C): 100 Hz for a2p's featurizers, 1998 per crop for the reference's."""
        if "features" in batch:
            return batch["features"]
        featurizer = self._ready(device)
        if isinstance(featurizer, ReferenceFeatures):
            valid = batch["length"] * SAMPLES_PER_FRAME
            return featurizer.features(batch["audio"], (self.role,), valid_samples=valid)[self.role]
        with torch.no_grad():
            return featurizer(batch["audio"])

    def clip_features(self, batch: dict[str, Any], device: torch.device, frames: int) -> Tensor:
        """The features of the first `frames` frames of a batch of whole clips (evaluation samples):
        a slice of the 100 Hz features, or the reference's front end on those frames alone."""
        featurizer = self._ready(device) if "features" not in batch else None
        if isinstance(featurizer, ReferenceFeatures):
            audio = batch["audio"][:, : frames * SAMPLES_PER_FRAME]
            return featurizer.features(audio, (self.role,))[self.role]
        return self(batch, device)[:, : features_frames(frames, FEATURE_RATE_HZ)]

    def _ready(self, device: torch.device) -> nn.Module:
        """The featurizer on `device`, built on first use."""
        if self._featurizer is None:
            from a2p.models.audio import build_featurizer

            self._featurizer = build_featurizer(self.featurizer_name, self.weights)
        return self._featurizer.to(device)
