"""Where a task's audio features come from: the shards, or a frozen featurizer run on the crop's audio.

Features stored by `a2p data build --features` are read as they are; otherwise the featurizer runs
under no_grad on each batch's audio. It is not part of the model or its checkpoint: it is
deterministic, or loaded from the file the config names. Shards whose features do not fit the
model are refused before any compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from a2p.config.audio import FEATURE_DIMS
from a2p.data.format import load_manifest
from a2p.errors import ConfigError
from a2p.training.tasks import ResumableIterable, TaskContext


class AudioInputs:
    """Audio features of training batches for a model that expects width `width`."""

    def __init__(self, featurizer: str, weights: str | None, width: int, width_key: str) -> None:
        self.featurizer_name, self.weights, self.width, self.width_key = featurizer, weights, width, width_key
        self.shards_have_features: bool | None = None
        self._featurizer: nn.Module | None = None

    def check_shards(self, shard_dir: str) -> None:
        """Refuse shards whose features (or the configured featurizer) do not fit the model."""
        manifest = load_manifest(shard_dir)
        if manifest.features:
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

    def loader(
        self,
        ctx: TaskContext,
        task: str,
        num_workers: int,
        shuffle_buffer: int,
        min_frames: int | None = None,
    ) -> ResumableIterable:
        """This rank's training loader over `ctx.data`, decoding audio only when features are missing.

        `min_frames`: the shortest crop (None: the loader's default random lengths).
        """
        from a2p.data import build_train_loader

        if not ctx.data:
            raise ConfigError(f"the {task} task needs --data SHARDS/PERSON")
        self.check_shards(ctx.data)
        return build_train_loader(
            ctx.data,
            ctx.batch_size,
            seed=ctx.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
            audio=not self.shards_have_features,
            features=True,
            units=ctx.units,
            **({} if min_frames is None else {"min_frames": min_frames}),
        )

    def __call__(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        """The batch's 100 Hz features (B, F, C)."""
        if "features" in batch:
            return batch["features"]
        if self._featurizer is None:
            from a2p.models.audio import build_featurizer

            self._featurizer = build_featurizer(self.featurizer_name, self.weights)
        self._featurizer.to(device)
        with torch.no_grad():
            return self._featurizer(batch["audio"])
