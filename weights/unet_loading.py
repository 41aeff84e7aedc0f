"""The U-Net's entry in the generic loader (:mod:`weights.components`).

    layout      what is on disk                                         config
    original    one SD checkpoint: model.diffusion_model.* (+ VAE,      none: SD v1 unless given,
                text encoder, EMA ...), e.g. v1-5-pruned-emaonly        checked by the shapes
    diffusers   MODEL/unet/diffusion_pytorch_model.safetensors          MODEL/unet/config.json
                (or that unet/ folder itself)
    project     NAME/unet.safetensors                                   NAME/unet.json (UNetConfig)
"""
from __future__ import annotations

from unet.config import UNetConfig
from unet.model import UNet

from .components import Component, export_to_diffusers, layout_renamers, load_component, save_model
from .diffusers_layout import project_to_diffusers
from .io import PathLike
from .original_unet import PREFIX, original_to_project

UNET = Component(
    name="unet",
    title="U-Net",
    model_type=UNet,
    config_type=UNetConfig,
    read_diffusers_config=UNetConfig.from_diffusers,
    write_diffusers_config=UNetConfig.to_diffusers,
    to_project=layout_renamers(original_to_project),
    to_diffusers=project_to_diffusers,
    original_prefix=PREFIX,
)


def load_unet(source: PathLike, config: UNetConfig | None = None, allow_pickle_weights_only: bool = False) -> UNet:
    """A :class:`UNet` (fp32, CPU, eval mode) with the weights of ``source`` in any of the three layouts.

    ``config`` is needed only for an original single file that is not SD v1 (the toy model's).
    """
    return load_component(UNET, source, config, allow_pickle_weights_only)


def save_unet(unet: UNet, folder: PathLike) -> None:
    """Save in the project's layout: ``folder/unet.safetensors`` + ``folder/unet.json``."""
    save_model(UNET, unet, folder)


def export_unet_to_diffusers(unet: UNet, folder: PathLike) -> None:
    """Write ``folder/unet/{diffusion_pytorch_model.safetensors, config.json}``; diffusers'
    ``UNet2DConditionModel.from_pretrained(folder, subfolder="unet")`` loads it."""
    export_to_diffusers(UNET, unet, folder)
