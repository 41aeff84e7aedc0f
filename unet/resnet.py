"""The U-Net's convolutional parts: the time-conditioned ResBlock and the down/up-sampling convolutions.

A residual block learns a correction F(x) to its input (He et al. 2016, "Deep Residual Learning"):

    y = F(x) + x             when the channel count is kept                      Eq. 1
    y = F(x) + W_s x         with a 1x1 convolution W_s when it changes          Eq. 2

In the diffusion U-Net (Ho et al. 2020, appendix B; LDM/SD v1) F is two 3x3 convolutions,
each after GroupNorm (Wu & He 2018) and SiLU (x sigmoid(x), Elfwing et al. 2018), and the
timestep enters between them as a per-channel bias:

    h    = conv1(SiLU(GroupNorm(x)))                                      (B, C_out, H, W)
    h    = h + Linear(SiLU(emb))[:, :, None, None]                        emb (B, 4 C_0)
    F(x) = conv2(SiLU(GroupNorm(h)))                                      (B, C_out, H, W)

SD v1 uses no dropout at inference, and the output scale factor is 1. The VAE (ldm/vae.py) uses
the same block without a timestep (``time_dim=None``: no ``time_emb_proj``, no bias term) and
without a site (no editor reaches into the VAE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .editor import Editor, Site, check_edited


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, + time embedding, GroupNorm-SiLU-conv3x3, + skip (Eq. 1 or 2).

    ``time_dim=None`` builds the block without the time embedding (the VAE's ResnetBlock).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int | None, site: Site | None,
                 groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__()
        self.site = site
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(time_dim, out_channels) if time_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # W_s of Eq. 2, only where the channel count changes (otherwise the identity of Eq. 1).
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None, editor: Editor | None = None) -> torch.Tensor:
        """x (B, C_in, H, W), emb (B, time_dim) or None without a time embedding -> (B, C_out, H, W)."""
        if (emb is None) != (self.time_emb_proj is None):
            time_dim = None if self.time_emb_proj is None else self.time_emb_proj.in_features
            where = self.site.name if self.site is not None else "(no site)"
            raise ValueError(f"ResBlock {where}: emb is {'None' if emb is None else 'given'} but the block "
                             f"was built with time_dim={time_dim}")
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]  # (B, C_out, H, W) + (B, C_out, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W): F(x)
        if editor is not None and self.site is not None:
            h = check_edited(editor.resnet_residual(h, self.site), h, "resnet_residual", self.site)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)  # (B, C_out, H, W)
        return skip + h  # (B, C_out, H, W)


class Downsample(nn.Module):
    """Halve the resolution with a learned 3x3 convolution of stride 2 (padding 1).

    ``asymmetric=True`` is the VAE encoder's variant: pad one zero row and column at the right and
    bottom only, then convolve without padding. Both give (H/2, W/2) for even H, W; the sampled
    windows are the same, shifted by one pixel.
    """

    def __init__(self, channels: int, asymmetric: bool = False) -> None:
        super().__init__()
        self.asymmetric = asymmetric
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0 if asymmetric else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))  # (B, C, H + 1, W + 1): zeros on the right and at the bottom
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 convolution to smooth the blocks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)  # (B, C, 2H, 2W)
