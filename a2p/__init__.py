"""a2p: the Audio2Photoreal motion models trained and sampled at cluster scale."""

from a2p.version import __version__

__all__ = ["__version__"]
