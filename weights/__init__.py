"""Weights: reading and writing files, the name tables between layouts, checked loading."""
from .checks import WeightsMismatchError, check_state_dict, load_checked
from .io import WeightsFileError, read_json, read_safetensors, read_weights, write_json, write_safetensors
from .unet_loading import export_unet_to_diffusers, load_unet, save_unet

__all__ = [
    "WeightsFileError", "WeightsMismatchError", "check_state_dict", "export_unet_to_diffusers", "load_checked",
    "load_unet", "read_json", "read_safetensors", "read_weights", "save_unet", "write_json", "write_safetensors",
]
