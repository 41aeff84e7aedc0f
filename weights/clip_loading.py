"""Load the CLIP text encoder from any of the three layouts; save it in the project's, export it to diffusers'.

    layout      what is on disk                                            config
    original    one SD v1 checkpoint: cond_stage_model.transformer.        none: SD v1 unless given,
                text_model.* (+ U-Net, VAE, EMA ...)                       checked by the shapes
    diffusers   MODEL/text_encoder/model.safetensors                       MODEL/text_encoder/config.json
                (or that text_encoder/ folder itself)                      (transformers' CLIPTextConfig)
    project     NAME/text_encoder.safetensors                              NAME/text_encoder.json

The project names its parameters as transformers 4's ``CLIPTextModel`` did, and the original SD v1
code wraps that same transformers model as ``cond_stage_model.transformer``, so the name table is
short:

    original / diffusers (transformers 4) / project         transformers 5 (saves without text_model.)
    cond_stage_model.transformer.text_model.<rest>          -
    text_model.<rest>                                       <rest>
    ...text_model.embeddings.position_ids (1, 77)           dropped (see below)

transformers 5 dropped the ``text_model`` level from ``CLIPTextModel`` and saves ``embeddings.*``,
``encoder.*``, ``final_layer_norm.*``; it reads both. So does the loader here, and the export
writes the ``text_model.*`` names, which every version of transformers and diffusers reads.

``position_ids`` is the buffer 0..76 that transformers saved with the weights before it made the
buffer non-persistent: SD v1's original checkpoints and its diffusers ``model.safetensors`` hold
it, newer files do not. The project computes the positions and keeps no buffer, so the key is
accepted (its shape checked) and dropped. (Some merged SD checkpoints hold float position ids
that have drifted off the integers; ignoring them is right.)

Loading itself is the generic procedure of :mod:`weights.components`.
"""
from __future__ import annotations

from typing import Any, Mapping, TypeVar

import torch

from ldm.clip_config import CLIPTextConfig
from ldm.clip_text import CLIPTextModel

from .checks import WeightsMismatchError
from .components import Component, export_to_diffusers, layout_renamers, load_component, save_model
from .io import PathLike

COMPONENT = "text_encoder"
PREFIX = "cond_stage_model.transformer."
DIFFUSERS_WEIGHTS = "model.safetensors"
ROOT = "text_model."
POSITION_IDS = ROOT + "embeddings.position_ids"
V = TypeVar("V")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def diffusers_to_project(state_dict: Mapping[str, V], config: CLIPTextConfig, what: str) -> dict[str, V]:
    """A transformers ``CLIPTextModel`` state dict in the project's names: ``text_model.`` put in front
    where transformers 5 left it out, and the legacy ``position_ids`` buffer, if present, dropped
    after checking that it is (1, max_position_embeddings)."""
    if not any(k.startswith(ROOT) for k in state_dict):
        state_dict = {ROOT + k: v for k, v in state_dict.items()}
    state_dict = dict(state_dict)
    if POSITION_IDS in state_dict:
        got, expected = _shape(state_dict.pop(POSITION_IDS)), (1, config.max_position_embeddings)
        if got != expected:
            raise WeightsMismatchError(what, [], [], [f"{POSITION_IDS}: {got} -> {expected}"])
    return state_dict


def original_to_project(checkpoint: Mapping[str, V], config: CLIPTextConfig, what: str) -> dict[str, V]:
    """The text encoder of an original SD v1 checkpoint (``cond_stage_model.transformer.*``), renamed.

    Ignores the rest of a full checkpoint (``model.diffusion_model.*``, ``first_stage_model.*``,
    ``model_ema.*``, ``alphas_cumprod`` ...). Works on tensors or on shapes from a header.
    """
    text = {k[len(PREFIX):]: v for k, v in checkpoint.items() if k.startswith(PREFIX)}
    if not text:
        raise ValueError(
            f"{what}: no keys start with {PREFIX!r}; expected an original SD v1 checkpoint (SD v2's "
            f"OpenCLIP encoder, cond_stage_model.model.*, is not this model)"
        )
    return diffusers_to_project(text, config, what)


def project_to_original(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Inverse of :func:`original_to_project` (without the dropped ``position_ids``)."""
    return {PREFIX + k: v for k, v in state_dict.items()}


TEXT_ENCODER = Component(
    name=COMPONENT,
    title="text encoder",
    model_type=CLIPTextModel,
    config_type=CLIPTextConfig,
    read_diffusers_config=CLIPTextConfig.from_transformers,
    write_diffusers_config=CLIPTextConfig.to_transformers,
    to_project=layout_renamers(original_to_project, diffusers_to_project),
    to_diffusers=dict,  # the project's names are transformers' (with text_model.)
    original_prefix=PREFIX,
    diffusers_weights=DIFFUSERS_WEIGHTS,
)


def load_text_encoder(
    source: PathLike, config: CLIPTextConfig | None = None, allow_pickle_weights_only: bool = False
) -> CLIPTextModel:
    """A :class:`CLIPTextModel` (fp32, CPU, eval mode) with the weights of ``source`` in any of the
    three layouts. ``config`` is needed only for an original single file that is not SD v1."""
    return load_component(TEXT_ENCODER, source, config, allow_pickle_weights_only)


def save_text_encoder(model: CLIPTextModel, folder: PathLike) -> None:
    """Save in the project's layout: ``folder/text_encoder.safetensors`` + ``folder/text_encoder.json``."""
    save_model(TEXT_ENCODER, model, folder)


def export_text_encoder_to_diffusers(model: CLIPTextModel, folder: PathLike) -> None:
    """Write ``folder/text_encoder/{model.safetensors, config.json}``; transformers'
    ``CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")`` loads it."""
    export_to_diffusers(TEXT_ENCODER, model, folder)
