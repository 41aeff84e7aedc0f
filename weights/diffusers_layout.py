"""The project's parameter names next to diffusers' names.

The project keeps diffusers' hierarchy (``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``)
so that its sites read like the weight names people know, and renames only the three places
where diffusers names a part by its index in an ``nn.Sequential``:

    diffusers                         project
    ...attn1.to_out.0.weight          ...attn1.to_out.weight        (the output projection)
    ...ff.net.0.proj.weight           ...ff.geglu.proj.weight       (GEGLU's gate projection)
    ...ff.net.2.weight                ...ff.out.weight              (the feed-forward's output)
"""
from __future__ import annotations

from typing import Mapping

import torch

# (diffusers fragment, project fragment); applied to ".<key>." so only whole name parts match.
RENAMES: tuple[tuple[str, str], ...] = (
    (".to_out.0.", ".to_out."),
    (".ff.net.0.proj.", ".ff.geglu.proj."),
    (".ff.net.2.", ".ff.out."),
)


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    dotted = f".{key}."
    for old, new in pairs:
        dotted = dotted.replace(old, new)
    return dotted[1:-1]


def diffusers_to_project(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``UNet2DConditionModel`` state dict to the project's layout."""
    return {_rename(k, RENAMES): v for k, v in state_dict.items()}


def project_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a project U-Net state dict to diffusers' layout."""
    inverse = tuple((new, old) for old, new in RENAMES)
    return {_rename(k, inverse): v for k, v in state_dict.items()}
