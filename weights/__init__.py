"""Weights: reading and writing files, the name tables between layouts, checked loading.

``from weights import load_unet`` (or any name below) imports the module that defines it at first
use, not before: the networks' configs import ``weights.config_json`` while the loaders here import
the networks, and an eager import of every loader would make that a cycle.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "export_text_encoder_to_diffusers": "clip_loading", "load_text_encoder": "clip_loading",
    "save_text_encoder": "clip_loading",
    "WeightsMismatchError": "checks", "check_state_dict": "checks", "load_checked": "checks",
    "load_model_folder": "model_folder",
    "WeightsFileError": "io", "read_json": "io", "read_safetensors": "io", "read_weights": "io", "write_json": "io",
    "write_safetensors": "io",
    "export_unet_to_diffusers": "unet_loading", "load_unet": "unet_loading", "save_unet": "unet_loading",
    "export_vae_to_diffusers": "vae_loading", "load_vae": "vae_loading", "save_vae": "vae_loading",
}  # weights.convert is not here: `python -m weights.convert` runs it as __main__

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # found once, then an ordinary attribute
        return value
    raise AttributeError(f"module 'weights' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
