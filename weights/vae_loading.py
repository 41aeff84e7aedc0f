"""Load the VAE from any of the three layouts; save it in the project's, export it to diffusers'.

    layout      what is on disk                                         config
    original    one SD checkpoint: first_stage_model.* (+ U-Net,        none: SD v1 unless given,
                text encoder ...), e.g. v1-5-pruned-emaonly             checked by the shapes
    diffusers   MODEL/vae/diffusion_pytorch_model.safetensors           MODEL/vae/config.json
                (or that vae/ folder itself)
    project     NAME/vae.safetensors                                    NAME/vae.json (VAEConfig)

As for the U-Net (:mod:`weights.unet_loading`, whose :func:`find_source` and
:func:`save_component` this reuses): find the files, read the config, rename the header's keys
and check every key and shape against a VAE built on the ``meta`` device, then read the tensors
and make them the parameters (``load_checked(..., assign=True)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ldm.vae import AutoencoderKL
from ldm.vae_config import VAEConfig

from .checks import check_state_dict, load_checked
from .diffusers_layout import diffusers_to_project, project_to_diffusers
from .io import PathLike, is_pickled, read_json, read_safetensors_shapes, read_weights, write_json, write_safetensors
from .original_vae import PREFIX, original_to_project
from .unet_loading import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, Source, find_source, save_component

COMPONENT = "vae"

# How each layout's names become the project's: (state dict or shapes, config, what) -> renamed.
TO_PROJECT: dict[str, Callable[[Mapping[str, Any], VAEConfig, str], dict[str, Any]]] = {
    "original": original_to_project,
    "diffusers": lambda sd, config, what: diffusers_to_project(sd),
    "project": lambda sd, config, what: dict(sd),
}


def _vae_config(src: Source, given: VAEConfig | None) -> VAEConfig:
    """The stored config (checked against ``given``), or ``given``, or SD v1 for an original file."""
    if given is not None and not isinstance(given, VAEConfig):
        raise ValueError(f"config must be a VAEConfig or None, got {type(given).__name__}")
    if src.config is None:
        return given or VAEConfig.sd_v1()
    stored = read_json(src.config)
    try:
        stored = VAEConfig.from_diffusers(stored) if src.layout == "diffusers" else VAEConfig.from_dict(stored)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{src.config}: {e}") from e
    if given is not None and given != stored:
        raise ValueError(f"config {given} differs from the one stored in {src.config}: {stored}")
    return stored


def load_vae(
    source: PathLike, config: VAEConfig | None = None, allow_pickle_weights_only: bool = False
) -> AutoencoderKL:
    """An :class:`AutoencoderKL` (fp32, CPU, eval mode) with the weights of ``source`` in any of the three layouts.

    ``config`` is needed only for an original single file that is not SD v1 (the toy model's);
    for the other layouts it is read from the folder, and a given one must equal it.
    """
    src = find_source(source, component=COMPONENT, original_prefix=PREFIX)
    config = _vae_config(src, config)
    to_project = TO_PROJECT[src.layout]
    with torch.device("meta"):
        model = AutoencoderKL(config)  # shapes only: no memory, no random init
    what = f"VAE weights {src.weights} ({src.layout} layout)"
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if not is_pickled(src.weights):  # names and shapes from the header, before reading any tensor
        shapes = to_project(read_safetensors_shapes(src.weights), config, what)
        check_state_dict(expected, {k: torch.empty(s, device="meta") for k, s in shapes.items()}, what)
    tensors = read_weights(src.weights, torch.float32, allow_pickle_weights_only)
    load_checked(model, to_project(tensors, config, what), what, assign=True)
    return model.eval()


def _check_vae(vae: AutoencoderKL) -> None:
    if not isinstance(vae, AutoencoderKL):
        raise ValueError(f"expected an ldm.vae.AutoencoderKL, got {type(vae).__name__}")


def save_vae(vae: AutoencoderKL, folder: PathLike) -> None:
    """Save in the project's layout: ``folder/vae.safetensors`` + ``folder/vae.json``."""
    _check_vae(vae)
    save_component(vae.state_dict(), vae.config.to_dict(), folder, COMPONENT)


def export_vae_to_diffusers(vae: AutoencoderKL, folder: PathLike) -> None:
    """Write ``folder/vae/{diffusion_pytorch_model.safetensors, config.json}`` for diffusers.

    ``diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae")`` loads it.
    """
    _check_vae(vae)
    folder = Path(folder) / COMPONENT
    write_safetensors(project_to_diffusers(vae.state_dict()), folder / DIFFUSERS_WEIGHTS, metadata={"format": "pt"})
    write_json(vae.config.to_diffusers(), folder / DIFFUSERS_CONFIG)
