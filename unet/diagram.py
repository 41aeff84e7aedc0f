"""A drawing of a U-Net, made from its module tree, so it is right for any configuration.

    from unet.diagram import draw_unet
    fig = draw_unet(UNetConfig.sd_v1(), latent_side=64)

The model is built on the meta device (shapes only, no weights), and every box is read off it:
each level's ResBlocks and spatial transformers, its Downsample or Upsample, its width and the side
of its feature maps, and how many skip connections cross from the encoder to the decoder at each
resolution. Encoder levels go down the left, the middle block sits at the bottom, decoder levels
come up the right; the horizontal arrows are the skip connections.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import UNetConfig
from .model import UNet


@dataclass(frozen=True)
class LevelBox:
    """What one box of the drawing says: a block of the U-Net at one resolution."""

    name: str  # the module path: down_blocks.0, mid_block, up_blocks.3
    resnets: int
    transformers: int
    channels: int
    side: int  # feature-map side at this block's input resolution, for the given latent side
    resample: str  # "Downsample", "Upsample" or ""

    def text(self) -> str:
        layers = f"{self.resnets} x ResBlock" + (f"\n+ {self.transformers} x transformer" if self.transformers else "")
        if self.name == "mid_block":
            layers = "ResBlock, transformer, ResBlock" if self.transformers else "ResBlock, ResBlock"
        tail = f"\n-> {self.resample}" if self.resample else ""
        return f"{self.name}\n{layers}\n{self.channels} ch, {self.side}x{self.side}{tail}"


def unet_levels(config: UNetConfig, latent_side: int) -> tuple[list[LevelBox], LevelBox, list[LevelBox], list[int]]:
    """(encoder boxes, middle box, decoder boxes, skips per resolution from the finest), read off the model."""
    if isinstance(latent_side, bool) or not isinstance(latent_side, int) or latent_side < 1:
        raise ValueError(f"latent_side must be a positive int, got {latent_side!r}")
    if latent_side % config.downsample_factor:
        raise ValueError(f"latent_side {latent_side} is not divisible by the U-Net's downsample factor "
                         f"{config.downsample_factor}")
    with torch.device("meta"):
        model = UNet(config)
    down, up = [], []
    skips = [1] + [0] * (len(model.down_blocks) - 1)  # conv_in's output is the first skip, at full resolution
    side = latent_side
    for i, block in enumerate(model.down_blocks):
        channels = block.resnets[-1].conv2.out_channels
        down.append(LevelBox(f"down_blocks.{i}", len(block.resnets), len(block.attentions), channels, side,
                             "Downsample" if len(block.downsamplers) else ""))
        skips[i] += len(block.resnets)  # each ResBlock's output is pushed
        if len(block.downsamplers):
            skips[i + 1] += 1  # and the Downsample's, at the next resolution
            side //= 2
    mid = LevelBox("mid_block", len(model.mid_block.resnets), len(model.mid_block.attentions),
                   model.mid_block.resnets[-1].conv2.out_channels, side, "")
    for i, block in enumerate(model.up_blocks):
        channels = block.resnets[-1].conv2.out_channels
        up.append(LevelBox(f"up_blocks.{i}", len(block.resnets), len(block.attentions), channels, side,
                           "Upsample" if len(block.upsamplers) else ""))
        if len(block.upsamplers):
            side *= 2
    return down, mid, up, skips


def draw_unet(config: UNetConfig, latent_side: int = 64, title: str | None = None):
    """The U-Net of ``config`` at a latent of ``latent_side`` as a matplotlib Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    down, mid, up, skips = unet_levels(config, latent_side)
    levels = len(down)
    width, height, gap_x, gap_y = 3.2, 1.35, 2.6, 0.55
    fig, ax = plt.subplots(figsize=(2 * width + gap_x + 1.6, (levels + 1) * (height + gap_y) + 1.2), dpi=120)

    def box(x, y, text, colour):
        ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.05", fc=colour, ec="0.25", lw=1.2))
        ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=10)

    def arrow(start, end, colour="0.25", text=None, offset=(0, 0.12)):
        ax.annotate("", end, start, arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.4))
        if text:
            ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, ha="center",
                    va="bottom", fontsize=10, color=colour)

    def colour(b: LevelBox):
        return "#cfe3f3" if b.transformers else "#e8e8e8"

    left, right = 0.0, width + gap_x
    top = levels * (height + gap_y)
    for i, b in enumerate(down):  # the encoder, finest level at the top
        y = top - i * (height + gap_y)
        box(left, y, b.text(), colour(b))
        if i + 1 < levels:
            arrow((left + width / 2, y - 0.05), (left + width / 2, y - gap_y + 0.05))
    for i, b in enumerate(up):  # the decoder mirrors it: up_blocks.0 is the coarsest
        y = top - (levels - 1 - i) * (height + gap_y)
        box(right, y, b.text(), colour(b))
        if i + 1 < levels:
            arrow((right + width / 2, y + height + 0.05), (right + width / 2, y + height + gap_y - 0.05))
    for level in range(levels):  # the skip connections, one arrow per resolution
        y = top - level * (height + gap_y) + height / 2
        side = latent_side >> level
        arrow((left + width + 0.08, y), (right - 0.08, y), "#b5462f",
              f"{skips[level]} skip{'s' if skips[level] != 1 else ''} at {side}x{side}")
    mid_x, mid_y = (left + right) / 2, 0.0
    box(mid_x, mid_y - height / 2 + 0.2, mid.text(), colour(mid))
    arrow((left + width / 2, top - (levels - 1) * (height + gap_y) - 0.05), (mid_x - 0.05, mid_y + 0.2))
    arrow((mid_x + width + 0.05, mid_y + 0.2), (right + width / 2, top - (levels - 1) * (height + gap_y) - 0.05))
    ax.text(left + width / 2, top + height + 0.35, f"z_t ({config.in_channels}, {latent_side}, {latent_side}) "
            f"-> conv_in", ha="center", fontsize=10)
    ax.text(right + width / 2, top + height + 0.35, f"conv_out -> eps ({config.out_channels}, {latent_side}, "
            f"{latent_side})", ha="center", fontsize=10)
    ax.text((left + right + width) / 2, top + height + 1.0,
            f"every ResBlock adds the time embedding ({config.time_embed_dim} wide); every transformer "
            f"(blue) cross-attends to the context (77, {config.cross_attention_dim})", ha="center", fontsize=10,
            color="0.3")
    ax.set_xlim(-0.4, right + width + 0.4)
    ax.set_ylim(mid_y - height, top + height + 1.4)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=13)
    fig.tight_layout()
    return fig
