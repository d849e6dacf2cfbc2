"""Typed configuration: strict dataclasses, named presets, `--set` overrides."""

from a2p.config.core import from_dict, load_config, merge, parse_override, save_config, to_dict

__all__ = ["from_dict", "load_config", "merge", "parse_override", "save_config", "to_dict"]
