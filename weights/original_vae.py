"""The original SD checkpoint's VAE names (``first_stage_model.*``) next to the project's.

The original code (``ldm/modules/diffusionmodules/model.py``, Encoder/Decoder) names the parts
like this (SD v1: 4 levels, 2 ResBlocks per encoder level, 3 per decoder level):

    original                                    project (= diffusers, with to_out for to_out.0)
    encoder.down.N.block.M.{norm1,conv1,        encoder.down_blocks.N.resnets.M.{norm1,conv1,
        norm2,conv2,nin_shortcut}                   norm2,conv2,conv_shortcut}
    encoder.down.N.downsample.conv              encoder.down_blocks.N.downsamplers.0.conv
    {en,de}coder.mid.block_1 / block_2          {en,de}coder.mid_block.resnets.0 / .1
    {en,de}coder.mid.attn_1.{norm,q,k,v,        {en,de}coder.mid_block.attentions.0.{group_norm,
        proj_out}                                   to_q,to_k,to_v,to_out}
    decoder.up.N.block.M, up.N.upsample.conv    decoder.up_blocks.(n-1-N).resnets.M, .upsamplers.0.conv
    {en,de}coder.norm_out                       {en,de}coder.conv_norm_out
    conv_in, conv_out, quant_conv, post_quant_conv: the same

Two things are more than a rename:

* The original decoder's ``up`` list is indexed by resolution like the encoder's ``down``
  (``up.0`` is the full-resolution level, run last); diffusers' ``up_blocks`` are in the order
  they run (``up_blocks.0`` is the deepest). So ``up.N`` is ``up_blocks.(n - 1 - N)``.
* The attention's Q, K, V and output projections are 1x1 convolutions in the original, weights
  (C, C, 1, 1); here they are Linear layers on the pixel tokens, weights (C, C). Same numbers.

The original's ``first_stage_model.loss.*`` (the training loss: LPIPS and the discriminator,
in full training checkpoints) is no part of the autoencoder and is ignored.
"""
from __future__ import annotations

from typing import Any, Mapping, TypeVar

import torch

from ldm.vae_config import VAEConfig

from .checks import WeightsMismatchError
from .original_unet import rename_modules

PREFIX = "first_stage_model."
IGNORED = PREFIX + "loss."
V = TypeVar("V")

STEM = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
CODER = {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}  # in encoder. and decoder.
RESBLOCK = {"nin_shortcut": "conv_shortcut"}  # norm1, conv1, norm2, conv2 keep their names
ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out"}
LINEAR_FROM_CONV = ("to_q", "to_k", "to_v", "to_out")  # project modules whose weights are 1x1 convs in the original


def module_table(config: VAEConfig) -> dict[str, str]:
    """Original module path (without the prefix) -> project module path, for every VAE module of ``config``."""
    n, L = len(config.block_out_channels), config.layers_per_block
    table = dict(STEM)

    def add(original: str, project: str, inside: Mapping[str, str]) -> None:
        table[original] = project
        table.update({f"{original}.{a}": f"{project}.{b}" for a, b in inside.items()})

    for coder in ("encoder", "decoder"):
        table.update({f"{coder}.{a}": f"{coder}.{b}" for a, b in CODER.items()})
        add(f"{coder}.mid.block_1", f"{coder}.mid_block.resnets.0", RESBLOCK)
        add(f"{coder}.mid.attn_1", f"{coder}.mid_block.attentions.0", ATTENTION)
        add(f"{coder}.mid.block_2", f"{coder}.mid_block.resnets.1", RESBLOCK)
    for level in range(n):
        for j in range(L):
            add(f"encoder.down.{level}.block.{j}", f"encoder.down_blocks.{level}.resnets.{j}", RESBLOCK)
        if level < n - 1:
            table[f"encoder.down.{level}.downsample.conv"] = f"encoder.down_blocks.{level}.downsamplers.0.conv"
        u = n - 1 - level  # the original's up.{level} runs as the u-th decoder level
        for j in range(L + 1):
            add(f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{u}.resnets.{j}", RESBLOCK)
        if level > 0:
            table[f"decoder.up.{level}.upsample.conv"] = f"decoder.up_blocks.{u}.upsamplers.0.conv"
    return table


def _is_linear_weight(project_key: str) -> bool:
    parts = project_key.split(".")
    return parts[-1] == "weight" and parts[-2] in LINEAR_FROM_CONV


def _conv_to_linear(v: Any) -> Any:
    """(C, C, 1, 1) -> (C, C), for a tensor or for a shape from a file's header."""
    if isinstance(v, torch.Tensor):
        return v[:, :, 0, 0] if v.ndim == 4 and v.shape[2:] == (1, 1) else v
    shape = tuple(v)
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else v


def _linear_to_conv(v: Any) -> Any:
    """(C, C) -> (C, C, 1, 1), for a tensor or a shape."""
    return v[:, :, None, None] if isinstance(v, torch.Tensor) else (*tuple(v), 1, 1)


def original_to_project(
    checkpoint: Mapping[str, V], config: VAEConfig, what: str = "original checkpoint"
) -> dict[str, V]:
    """The VAE of an original SD checkpoint, renamed to the project's layout (conv attention weights reshaped).

    Takes the keys under ``first_stage_model.`` (but not ``first_stage_model.loss.``) and ignores
    the rest of the file. A key under the prefix that is no module of ``config``'s VAE is an
    error listing them all. Works on tensors, or on shapes when checking a file's header.
    """
    vae = {k[len(PREFIX):]: v for k, v in checkpoint.items() if k.startswith(PREFIX) and not k.startswith(IGNORED)}
    if not vae:
        raise ValueError(f"{what}: no keys start with {PREFIX!r}; expected an original single-file SD checkpoint")
    names, unknown = rename_modules(vae, module_table(config))
    if unknown:
        raise WeightsMismatchError(f"{what} ({PREFIX}* against {config})", [], [PREFIX + k for k in unknown], [])
    return {names[k]: _conv_to_linear(v) if _is_linear_weight(names[k]) else v for k, v in vae.items()}


def project_to_original(state_dict: Mapping[str, V], config: VAEConfig) -> dict[str, V]:
    """Inverse of :func:`original_to_project`: project names -> ``first_stage_model.*``, 1x1 conv attention weights."""
    names, unknown = rename_modules(state_dict, {p: o for o, p in module_table(config).items()})
    if unknown:
        raise WeightsMismatchError(f"project VAE state dict for {config}", [], unknown, [])
    return {PREFIX + names[k]: _linear_to_conv(v) if _is_linear_weight(k) else v for k, v in state_dict.items()}
