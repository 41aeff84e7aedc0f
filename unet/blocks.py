"""The U-Net's three kinds of block: a down level, the middle, an up level.

A level is ``layers`` pairs of (ResBlock, spatial transformer), the transformer only at levels
with attention (SD v1: all but the deepest), followed by a Downsample (down path, all but the
last level) or an Upsample (up path, all but the last level). The up path runs ``layers + 1``
ResBlocks per level, each taking the channel-concatenation of the running features and one
skip connection from the down path, last in, first out (Ronneberger et al. 2015, the U-Net).

Each block names the sites of its modules when it is built, from its place in the network, so
that ``site.name`` is the module's path in ``UNet.named_modules()``. ``block.sites`` lists them
in the order the forward pass visits them.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import SpatialTransformer
from .config import UNetConfig
from .editor import Editor, Site
from .resnet import Downsample, ResBlock, Upsample


def transformer_sites(prefix: str, location: str, block: int, index: int, downsample: int,
                      depth: int) -> list[tuple[Site, Site]]:
    """The (self, cross) sites of a spatial transformer's ``depth`` transformer blocks."""
    def site(layer: int, attn: str, kind: str) -> Site:
        return Site(f"{prefix}.transformer_blocks.{layer}.{attn}", kind, location, block, index, downsample, layer)

    return [(site(layer, "attn1", "self"), site(layer, "attn2", "cross")) for layer in range(depth)]


class LevelBlock(nn.Module):
    """One level's block, ``down_blocks.{block}`` or ``up_blocks.{block}``: ``resnets[j]`` then (where the
    level has attention) ``attentions[j]``, for j = 0 .. len - 1.

    ``in_channels[j]`` is ResBlock j's input width, the skip's width included on the up path.
    """

    def __init__(self, config: UNetConfig, location: str, block: int, in_channels: list[int],
                 out_channels: int, attention: bool, downsample: int) -> None:
        super().__init__()
        prefix = f"{location}_blocks.{block}"
        self.sites: list[Site] = []
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()  # stays empty at levels without attention
        for j, c_in in enumerate(in_channels):
            site = Site(f"{prefix}.resnets.{j}", "resnet", location, block, j, downsample)
            self.resnets.append(ResBlock(c_in, out_channels, config.time_embed_dim, site,
                                         config.norm_num_groups, config.norm_eps))
            self.sites.append(site)
            if attention:
                pairs = transformer_sites(f"{prefix}.attentions.{j}", location, block, j, downsample,
                                          config.transformer_layers_per_block)
                self.attentions.append(SpatialTransformer(out_channels, config.num_heads, config.cross_attention_dim,
                                                          pairs, config.norm_num_groups, config.use_linear_projection))
                self.sites.extend(s for pair in pairs for s in pair)

    def layer(self, j: int, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
              editor: Editor | None) -> torch.Tensor:
        """Layer j: ResBlock j, then spatial transformer j where the level has attention."""
        h = self.resnets[j](h, emb, editor)  # (B, C_out, H, W)
        if len(self.attentions):
            h = self.attentions[j](h, context, editor)  # (B, C_out, H, W)
        return h


class DownBlock(LevelBlock):
    """One encoder level; returns its output and the features it hands to the decoder as skips."""

    def __init__(self, config: UNetConfig, block: int, in_channels: int, out_channels: int,
                 attention: bool, add_downsample: bool) -> None:
        widths = [in_channels] + [out_channels] * (config.layers_per_block - 1)
        super().__init__(config, "down", block, widths, out_channels, attention, downsample=2**block)
        self.downsamplers = nn.ModuleList([Downsample(out_channels)] if add_downsample else [])

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                editor: Editor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for j in range(len(self.resnets)):
            h = self.layer(j, h, emb, context, editor)  # (B, C_out, H, W)
            skips.append(h)
        for down in self.downsamplers:
            h = down(h)  # (B, C_out, H/2, W/2)
            skips.append(h)
        return h, skips


class UpBlock(LevelBlock):
    """One decoder level: each ResBlock eats cat(h, skip) along channels; then Upsample."""

    def __init__(self, config: UNetConfig, block: int, in_channels: int, skip_channels: list[int],
                 out_channels: int, attention: bool, add_upsample: bool, downsample: int) -> None:
        # ResBlock j sees the running features (in_channels for j = 0, out_channels after) plus skip j.
        widths = [(in_channels if j == 0 else out_channels) + c for j, c in enumerate(skip_channels)]
        super().__init__(config, "up", block, widths, out_channels, attention, downsample)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)] if add_upsample else [])

    def forward(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, context: torch.Tensor,
                editor: Editor | None = None) -> torch.Tensor:
        """Pops ``len(self.resnets)`` entries off the end of ``skips``."""
        for j in range(len(self.resnets)):
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C_h + C_skip, H, W)
            h = self.layer(j, h, emb, context, editor)  # (B, C_out, H, W)
        for up in self.upsamplers:
            h = up(h)  # (B, C_out, 2H, 2W)
        return h


class MidBlock(nn.Module):
    """The bottleneck at the deepest resolution: ResBlock, spatial transformer, ResBlock."""

    def __init__(self, config: UNetConfig, channels: int) -> None:
        super().__init__()
        downsample = config.downsample_factor
        resnet_sites = [Site(f"mid_block.resnets.{j}", "resnet", "mid", 0, j, downsample) for j in range(2)]
        pairs = transformer_sites("mid_block.attentions.0", "mid", 0, 0, downsample, config.transformer_layers_per_block)
        self.resnets = nn.ModuleList(
            ResBlock(channels, channels, config.time_embed_dim, site, config.norm_num_groups, config.norm_eps)
            for site in resnet_sites
        )
        self.attentions = nn.ModuleList([
            SpatialTransformer(channels, config.num_heads, config.cross_attention_dim, pairs,
                               config.norm_num_groups, config.use_linear_projection)
        ])
        self.sites = [resnet_sites[0], *(s for pair in pairs for s in pair), resnet_sites[1]]

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                editor: Editor | None = None) -> torch.Tensor:
        h = self.resnets[0](h, emb, editor)  # (B, C, H, W)
        h = self.attentions[0](h, context, editor)  # (B, C, H, W)
        return self.resnets[1](h, emb, editor)  # (B, C, H, W)
