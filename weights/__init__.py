"""Weights: reading and writing files, the name tables between layouts, checked loading."""
from .clip_loading import export_text_encoder_to_diffusers, load_text_encoder, save_text_encoder
from .checks import WeightsMismatchError, check_state_dict, load_checked
from .model_folder import load_model_folder
from .io import WeightsFileError, read_json, read_safetensors, read_weights, write_json, write_safetensors
from .unet_loading import export_unet_to_diffusers, load_unet, save_unet
from .vae_loading import export_vae_to_diffusers, load_vae, save_vae

__all__ = [
    "WeightsFileError", "WeightsMismatchError", "check_state_dict", "export_unet_to_diffusers", "load_checked",
    "load_unet", "read_json", "read_safetensors", "read_weights", "save_unet", "write_json", "write_safetensors",
    "export_vae_to_diffusers", "load_vae", "save_vae",
    "export_text_encoder_to_diffusers", "load_text_encoder", "save_text_encoder",
    "load_model_folder",  # weights.convert is not imported here: `python -m weights.convert` runs it as __main__
]
