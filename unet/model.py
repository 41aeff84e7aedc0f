"""The Stable Diffusion v1 U-Net: the denoiser eps_theta(z_t, t, tau(y)) of the conditional LDM objective
(Rombach et al. 2022, Eq. 3), with the architecture of the paper's appendix and SD v1's config.

    z_t (B, 4, H, W) --conv_in--> (B, 320, H, W)
      down_blocks.0   2 x [ResBlock, transformer]  320 ch, H x W         -> Downsample
      down_blocks.1   2 x [ResBlock, transformer]  640 ch, H/2           -> Downsample
      down_blocks.2   2 x [ResBlock, transformer]  1280 ch, H/4          -> Downsample
      down_blocks.3   2 x  ResBlock                1280 ch, H/8
      mid_block       ResBlock, transformer, ResBlock                    1280 ch, H/8
      up_blocks.0     3 x  ResBlock                1280 ch, H/8          -> Upsample
      up_blocks.1     3 x [ResBlock, transformer]  1280 ch, H/4          -> Upsample
      up_blocks.2     3 x [ResBlock, transformer]  640 ch, H/2           -> Upsample
      up_blocks.3     3 x [ResBlock, transformer]  320 ch, H x W
    --GroupNorm, SiLU, conv_out--> eps (B, 4, H, W)

(the numbers are SD v1's; :class:`~unet.config.UNetConfig` sets them). The timestep enters every
ResBlock through emb = linear_2(SiLU(linear_1(timestep_embedding(t)))), (B, 1280); the text
enters every transformer through cross-attention on ``context`` (B, 77, 768). Every feature map
the down path produces (conv_in's output, each down ResBlock/transformer output, each
Downsample's output) is kept and concatenated, last in first out, onto the input of one up
ResBlock.

Sites, in the order ``forward`` visits them (``UNet.sites``): for each down level, then the mid
block, then each up level, ResBlock j's ``resnet`` site followed by the ``self`` (attn1) and
``cross`` (attn2) sites of each transformer block of spatial transformer j; the mid block's
order is resnets.0, its attention sites, resnets.1. SD v1 has 22 ResBlock sites (8 down, 2 mid,
12 up) and 16 spatial transformers, so 32 attention sites (16 self, 16 cross).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock, MidBlock, UpBlock
from .config import UNetConfig
from .editor import Editor, Site
from .embeddings import timestep_embedding


class TimeEmbedding(nn.Module):
    """The timestep MLP: emb = linear_2(SiLU(linear_1(sinusoids))), C_0 -> 4 C_0 -> 4 C_0."""

    def __init__(self, dim: int, time_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, time_dim)
        self.linear_2 = nn.Linear(time_dim, time_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))  # (B, C_0) -> (B, 4 C_0)


class UNet(nn.Module):
    """eps = UNet(x, t, context, editor=None); the parameter names are diffusers' (see weights/)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths, n, layers = config.block_out_channels, len(config.block_out_channels), config.layers_per_block
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        self.time_embedding = TimeEmbedding(widths[0], config.time_embed_dim)

        # Encoder. skip_channels mirrors the stack of skips forward() builds, to size the decoder.
        skip_channels = [widths[0]]  # conv_in's output
        self.down_blocks = nn.ModuleList()
        c_prev = widths[0]
        for level, c in enumerate(widths):
            last = level == n - 1
            self.down_blocks.append(DownBlock(config, level, c_prev, c, config.attention_levels[level], not last))
            skip_channels += [c] * (layers + (0 if last else 1))  # each layer's output, the Downsample's
            c_prev = c

        self.mid_block = MidBlock(config, widths[-1])

        # Decoder: up level i works at encoder level n - 1 - i's resolution and mirrors its attention.
        self.up_blocks = nn.ModuleList()
        for i, c in enumerate(reversed(widths)):
            level = n - 1 - i
            skips = [skip_channels.pop() for _ in range(layers + 1)]  # last in, first out
            self.up_blocks.append(UpBlock(config, i, c_prev, skips, c, config.attention_levels[level],
                                          add_upsample=i < n - 1, downsample=2**level))
            c_prev = c
        assert not skip_channels, "every skip connection is consumed by exactly one up ResBlock"

        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, widths[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, kernel_size=3, padding=1)
        blocks = [*self.down_blocks, self.mid_block, *self.up_blocks]
        self._sites = tuple(site for block in blocks for site in block.sites)

    @property
    def sites(self) -> list[Site]:
        """Every ResBlock and attention site, in the order forward() visits them."""
        return list(self._sites)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor | int | float, context: torch.Tensor,
                     editor: Editor | None) -> torch.Tensor:
        """Validate the inputs before any heavy work; return t as a (B,) tensor on x's device."""
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a (B, {cfg.in_channels}, H, W) tensor, got {got}")
        batch, channels, height, width = x.shape
        if channels != cfg.in_channels:
            raise ValueError(f"x has {channels} channels (shape {tuple(x.shape)}), expected in_channels={cfg.in_channels}")
        f = cfg.downsample_factor
        if height % f or width % f:
            raise ValueError(f"x's spatial size {height}x{width} is not divisible by the U-Net's downsample factor {f}")
        if not isinstance(context, torch.Tensor) or context.ndim != 3:
            got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"context must be a (B, tokens, {cfg.cross_attention_dim}) tensor, got {got}")
        if context.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(f"context has last dim {context.shape[-1]} (shape {tuple(context.shape)}), "
                             f"expected cross_attention_dim={cfg.cross_attention_dim}")
        if context.shape[0] != batch:
            raise ValueError(f"context has batch {context.shape[0]}, expected x's batch {batch}")
        t = torch.as_tensor(t, device=x.device)
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"t must hold real timesteps, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"t has shape {tuple(t.shape)}, expected a scalar or shape ({batch},) matching x's batch")
        if editor is not None and not isinstance(editor, Editor):
            raise TypeError(f"editor must be an unet.Editor or None, got {type(editor).__name__}")
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float, context: torch.Tensor,
                editor: Editor | None = None) -> torch.Tensor:
        """x (B, C_in, H, W), t scalar or (B,), context (B, M, C_ctx) -> eps (B, C_out, H, W)."""
        t = self.check_inputs(x, t, context, editor)
        emb = timestep_embedding(t, self.config.block_out_channels[0]).to(x.dtype)  # (B, C_0)
        emb = self.time_embedding(emb)  # (B, 4 C_0)

        h = self.conv_in(x)  # (B, C_0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context, editor)  # (B, C_i, H / 2^(i+1), W / 2^(i+1)); the last level keeps H / f
            skips += block_skips
        h = self.mid_block(h, emb, context, editor)  # (B, C_last, H / f, W / f), f = downsample_factor
        for block in self.up_blocks:
            h = block(h, skips, emb, context, editor)  # pops layers_per_block + 1 skips
        h = F.silu(self.conv_norm_out(h))  # (B, C_0, H, W)
        return self.conv_out(h)  # (B, C_out, H, W)
