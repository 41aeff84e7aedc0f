"""The original single-file Stable Diffusion v1 checkpoint's U-Net names, as a rule table.

The CompVis/LDM code (``ldm/modules/diffusionmodules/openaimodel.py``) builds the U-Net from
numbered ``nn.Sequential`` lists, so its weights are named by position. A checkpoint stores them
under ``model.diffusion_model.`` (the VAE under ``first_stage_model.``, the text encoder under
``cond_stage_model.``, an EMA copy under ``model_ema.``). For SD v1 (two ResBlocks per level,
attention at levels 0-2) the positions are:

    input_blocks.0.0                 conv_in
    input_blocks.1, 2                level 0: [ResBlock, SpatialTransformer]      (.0 and .1)
    input_blocks.3.0.op              level 0's Downsample (a stride-2 conv)
    input_blocks.4, 5 / 7, 8         levels 1, 2: [ResBlock, SpatialTransformer]
    input_blocks.6 / 9               Downsamples
    input_blocks.10, 11              level 3: [ResBlock]                          (no attention)
    middle_block.0, 1, 2             ResBlock, SpatialTransformer, ResBlock
    output_blocks.0, 1, 2            level 3: [ResBlock]; output_blocks.2.1.conv is its Upsample
    output_blocks.3, 4, 5            level 2: [ResBlock, SpatialTransformer]; 5.2.conv the Upsample
    output_blocks.6, 7, 8            level 1: likewise; 8.2.conv the Upsample
    output_blocks.9, 10, 11          level 0: [ResBlock, SpatialTransformer]     (no Upsample)
    time_embed.0, .2                 the time MLP's two Linears (.1 is the SiLU)
    out.0, out.2                     GroupNorm and conv_out (out.1 is the SiLU)

In general (``L = layers_per_block``): the encoder has ``L`` ResBlocks per level and a
Downsample after every level but the last; the decoder has ``L + 1`` ResBlocks per level (the
extra one takes the skip from the Downsample) and an Upsample after every level but the top.
:func:`module_table` derives the whole map from the config, module by module; inside a
SpatialTransformer the names (``transformer_blocks.0.attn1.to_q``, ``ff.net.2``, ``norm``,
``proj_in``) are diffusers' already, and :mod:`weights.diffusers_layout` renames the three
that the project changes.
"""
from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

from unet.config import UNetConfig

from .checks import WeightsMismatchError
from .diffusers_layout import diffusers_to_project, project_to_diffusers

PREFIX = "model.diffusion_model."
V = TypeVar("V")

# Outside the blocks: original module -> project module.
STEM = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}

# Inside one ResBlock. The original's Sequentials are in_layers = (GroupNorm, SiLU, conv),
# emb_layers = (SiLU, Linear), out_layers = (GroupNorm, SiLU, Dropout, conv).
RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",  # the 1x1 conv where the channel count changes
}


def module_table(config: UNetConfig) -> dict[str, str]:
    """Original module path -> project module path, for every module of ``config`` that holds weights."""
    L, n = config.layers_per_block, len(config.block_out_channels)
    table = dict(STEM)

    def resblock(original: str, project: str) -> None:
        table.update({f"{original}.{a}": f"{project}.{b}" for a, b in RESBLOCK.items()})

    i = 1  # input_blocks.0 is conv_in
    for level, attention in enumerate(config.attention_levels):
        for j in range(L):
            resblock(f"input_blocks.{i}.0", f"down_blocks.{level}.resnets.{j}")
            if attention:
                table[f"input_blocks.{i}.1"] = f"down_blocks.{level}.attentions.{j}"
            i += 1
        if level < n - 1:
            table[f"input_blocks.{i}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            i += 1

    resblock("middle_block.0", "mid_block.resnets.0")
    table["middle_block.1"] = "mid_block.attentions.0"
    resblock("middle_block.2", "mid_block.resnets.1")

    i = 0
    for u, attention in enumerate(reversed(config.attention_levels)):  # u = 0 is the deepest level
        for j in range(L + 1):
            resblock(f"output_blocks.{i}.0", f"up_blocks.{u}.resnets.{j}")
            if attention:
                table[f"output_blocks.{i}.1"] = f"up_blocks.{u}.attentions.{j}"
            if j == L and u < n - 1:  # the Upsample follows the ResBlock (and transformer) it shares a block with
                table[f"output_blocks.{i}.{2 if attention else 1}.conv"] = f"up_blocks.{u}.upsamplers.0.conv"
            i += 1
    return table


def rename_modules(keys: Iterable[str], table: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Rename each key by the longest module path of ``table`` that it starts with.

    ``input_blocks.1.1.proj_in.weight`` matches ``input_blocks.1.1`` and becomes
    ``down_blocks.0.attentions.0.proj_in.weight``. Returns ``(old -> new, keys that match nothing)``.
    """
    renamed, unknown = {}, []
    for key in keys:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in table:
                renamed[key] = ".".join([table[module], *parts[cut:]])
                break
        else:
            unknown.append(key)
    return renamed, sorted(unknown)


def original_to_project(
    checkpoint: Mapping[str, V], config: UNetConfig, what: str = "original checkpoint"
) -> dict[str, V]:
    """The U-Net of an original SD checkpoint, renamed to the project's layout.

    Takes the keys under ``model.diffusion_model.`` and ignores the rest of a full checkpoint
    (``model_ema.*``, ``first_stage_model.*``, ``cond_stage_model.*``, ``alphas_cumprod``...).
    A key under the prefix that is no module of ``config``'s U-Net is an error listing them all.
    Works on any values: tensors, or shapes when checking a file's header before reading it.
    """
    unet = {k[len(PREFIX):]: v for k, v in checkpoint.items() if k.startswith(PREFIX)}
    if not unet:
        raise ValueError(f"{what}: no keys start with {PREFIX!r}; expected an original single-file SD checkpoint")
    names, unknown = rename_modules(unet, module_table(config))
    if unknown:
        raise WeightsMismatchError(f"{what} ({PREFIX}* against {config})", [], [PREFIX + k for k in unknown], [])
    return diffusers_to_project({names[k]: v for k, v in unet.items()})


def project_to_original(state_dict: Mapping[str, V], config: UNetConfig) -> dict[str, V]:
    """Inverse of :func:`original_to_project`: project names -> ``model.diffusion_model.*`` names."""
    diffusers = project_to_diffusers(state_dict)
    names, unknown = rename_modules(diffusers, {p: o for o, p in module_table(config).items()})
    if unknown:
        raise WeightsMismatchError(f"project U-Net state dict for {config}", [], unknown, [])
    return {PREFIX + names[k]: v for k, v in diffusers.items()}
