"""The VAE's entry in the generic loader (:mod:`weights.components`).

    layout      what is on disk                                         config
    original    one SD checkpoint: first_stage_model.* (+ U-Net,        none: SD v1 unless given,
                text encoder ...), e.g. v1-5-pruned-emaonly             checked by the shapes
    diffusers   MODEL/vae/diffusion_pytorch_model.safetensors           MODEL/vae/config.json
                (or that vae/ folder itself)
    project     NAME/vae.safetensors                                    NAME/vae.json (VAEConfig)
"""
from __future__ import annotations

from ldm.vae import AutoencoderKL
from ldm.vae_config import VAEConfig

from .components import Component, export_to_diffusers, layout_renamers, load_component, save_model
from .diffusers_layout import project_to_diffusers
from .io import PathLike
from .original_vae import PREFIX, original_to_project

VAE = Component(
    name="vae",
    title="VAE",
    model_type=AutoencoderKL,
    config_type=VAEConfig,
    read_diffusers_config=VAEConfig.from_diffusers,
    write_diffusers_config=VAEConfig.to_diffusers,
    to_project=layout_renamers(original_to_project),
    to_diffusers=project_to_diffusers,
    original_prefix=PREFIX,
)


def load_vae(
    source: PathLike, config: VAEConfig | None = None, allow_pickle_weights_only: bool = False
) -> AutoencoderKL:
    """An :class:`AutoencoderKL` (fp32, CPU, eval mode) with the weights of ``source`` in any of the
    three layouts. ``config`` is needed only for an original single file that is not SD v1."""
    return load_component(VAE, source, config, allow_pickle_weights_only)


def save_vae(vae: AutoencoderKL, folder: PathLike) -> None:
    """Save in the project's layout: ``folder/vae.safetensors`` + ``folder/vae.json``."""
    save_model(VAE, vae, folder)


def export_vae_to_diffusers(vae: AutoencoderKL, folder: PathLike) -> None:
    """Write ``folder/vae/{diffusion_pytorch_model.safetensors, config.json}``; diffusers'
    ``AutoencoderKL.from_pretrained(folder, subfolder="vae")`` loads it."""
    export_to_diffusers(VAE, vae, folder)
