"""The KL autoencoder of Stable Diffusion v1 (the LDM's "first stage"): images <-> latents.

A variational autoencoder (Kingma & Welling 2014) learns an encoder q(z | x) and a decoder
p(x | z). The LDM (Rombach et al. 2022, section 3.1) trains one with a perceptual and an
adversarial loss and only a light KL penalty, so that the diffusion model can work on small
latents z (B, 4, H/8, W/8) instead of pixels x (B, 3, H, W).

The encoder outputs, per latent pixel and channel, the mean and log-variance of a diagonal
Gaussian (:class:`DiagonalGaussian`):

    q(z | x) = N(z; mu(x), diag sigma(x)^2)                                   (Kingma & Welling, Eq. 9)

and a sample is drawn with the reparameterisation trick (Kingma & Welling, section 2.4):

    z = mu + sigma * eps,      eps ~ N(0, I)

The KL term of the loss, against the prior N(0, I), has a closed form (Kingma & Welling, appendix B):

    KL(q(z | x) || N(0, I)) = 1/2 sum (mu^2 + sigma^2 - 1 - log sigma^2)

Before the diffusion model sees them, the latents are multiplied by ``scaling_factor``
(0.18215 for SD v1), chosen as 1 / std of the latents over the training set (LDM, appendix G),
so z_0 = 0.18215 * z has roughly unit variance like the noise it is mixed with.

Architecture (names as diffusers' ``AutoencoderKL``, so its state dicts load after the one
rename of :mod:`weights.diffusers_layout`):

    encoder: conv_in -> down_blocks[i] (ResBlocks, Downsample except at the last level)
             -> mid_block (ResBlock, self-attention, ResBlock) -> GroupNorm, SiLU, conv_out (2 x latent)
    quant_conv (1x1) -> (mu, log sigma^2)     post_quant_conv (1x1) on z
    decoder: conv_in -> mid_block -> up_blocks[i] (ResBlocks, Upsample except at the last level)
             -> GroupNorm, SiLU, conv_out (image channels)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from unet.resnet import Downsample, ResBlock, Upsample

from .vae_config import VAEConfig

NORM_EPS = 1e-6  # every GroupNorm of the SD autoencoder
LOGVAR_RANGE = (-30.0, 20.0)  # the original's clamp on log sigma^2 (keeps exp() finite)


class DiagonalGaussian:
    """q(z | x) = N(mu, diag sigma^2), from the encoder's (B, 2 C, h, w) output: mu first, then log sigma^2."""

    def __init__(self, parameters: torch.Tensor) -> None:
        self.mean, logvar = parameters.chunk(2, dim=1)  # 2 x (B, C, h, w)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)  # (B, C, h, w): log sigma^2
        self.std = torch.exp(0.5 * self.logvar)  # (B, C, h, w): sigma
        self.var = torch.exp(self.logvar)  # (B, C, h, w): sigma^2

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) drawn in one ``randn`` of the whole batch (as diffusers)."""
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * eps  # (B, C, h, w)

    def mode(self) -> torch.Tensor:
        """The most likely z, mu (what SD uses to encode an image for editing)."""
        return self.mean  # (B, C, h, w)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) = 1/2 sum over (C, h, w) of mu^2 + sigma^2 - 1 - log sigma^2, per image -> (B,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))  # (B,)


class MidAttention(nn.Module):
    """Single-head self-attention over the h w pixels of a feature map, with its own GroupNorm and skip:

        y = x + W_O softmax(Q K^T / sqrt(C)) V,    Q, K, V = W_{Q,K,V} GroupNorm(x)   (tokens of width C)

    Unlike the U-Net's :class:`unet.attention.Attention` it has one head, biases on Q, K, V, its
    GroupNorm inside and no editor; the original stores W_{Q,K,V,O} as 1x1 convolutions.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) -> (B, C, h, w)."""
        height, width = x.shape[-2:]
        h = rearrange(self.group_norm(x), "b c h w -> b 1 (h w) c")  # (B, 1 head, hw, C)
        h = F.scaled_dot_product_attention(self.to_q(h), self.to_k(h), self.to_v(h))  # (B, 1, hw, C)
        h = rearrange(self.to_out(h), "b 1 (h w) c -> b c h w", h=height, w=width)  # (B, C, h, w)
        return x + h  # (B, C, h, w)


class MidBlock(nn.Module):
    """ResBlock, self-attention, ResBlock, all at the deepest width (the lowest resolution)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(channels, channels, None, None, groups, NORM_EPS) for _ in range(2))
        self.attentions = nn.ModuleList([MidAttention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, None)  # (B, C, h, w)
        x = self.attentions[0](x)  # (B, C, h, w)
        return self.resnets[1](x, None)  # (B, C, h, w)


class Level(nn.Module):
    """One resolution: ResBlocks from ``in_channels`` to ``out_channels``, then an optional
    Downsample (encoder: asymmetric padding) or Upsample (decoder)."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, resample: str | None) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * (layers - 1)
        self.resnets = nn.ModuleList(ResBlock(c, out_channels, None, None, groups, NORM_EPS) for c in widths)
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(out_channels, asymmetric=True)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(out_channels)])
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, None)  # (B, C_out, H, W)
        if self.resample == "down":
            x = self.downsamplers[0](x)  # (B, C_out, H/2, W/2)
        elif self.resample == "up":
            x = self.upsamplers[0](x)  # (B, C_out, 2H, 2W)
        return x


class Encoder(nn.Module):
    """x (B, 3, H, W) -> the parameters of q(z | x): (B, 2 x latent_channels, H/f, W/f), mu then log sigma^2."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths, groups, n = config.block_out_channels, config.norm_num_groups, len(config.block_out_channels)
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            Level(widths[max(i - 1, 0)], widths[i], config.layers_per_block, groups, "down" if i < n - 1 else None)
            for i in range(n)
        )
        self.mid_block = MidBlock(widths[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, C_0, H, W)
        for block in self.down_blocks:
            h = block(h)  # (B, C_i, H / 2^i, W / 2^i), halved after every level but the last
        h = self.mid_block(h)  # (B, C_last, H/f, W/f)
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, 2 latent, H/f, W/f)


class Decoder(nn.Module):
    """z (B, latent_channels, h, w) -> x (B, 3, f h, f w): the encoder's levels in reverse, one more ResBlock each."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths, groups, n = config.block_out_channels[::-1], config.norm_num_groups, len(config.block_out_channels)
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], kernel_size=3, padding=1)
        self.mid_block = MidBlock(widths[0], groups)
        self.up_blocks = nn.ModuleList(
            Level(widths[max(i - 1, 0)], widths[i], config.layers_per_block + 1, groups, "up" if i < n - 1 else None)
            for i in range(n)
        )
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))  # (B, C_last, h, w)
        for block in self.up_blocks:
            h = block(h)  # (B, C, 2^i h, 2^i w), doubled after every level but the last
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, 3, f h, f w)


class AutoencoderKL(nn.Module):
    """SD v1's VAE. ``encode(x) -> DiagonalGaussian``, ``decode(z) -> x``; images in [-1, 1].

    ``encode_to_latents`` / ``decode_latents`` apply the ``scaling_factor`` on the way to and
    from the diffusion model's latent space: z_0 = scaling_factor * z.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VAEConfig.sd_v1()
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, kernel_size=1)
        self.decoder = Decoder(config)

    def _check(self, x: torch.Tensor, channels: int, what: str, multiple: int = 1) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{what} must be (B, {channels}, H, W), got {shape}")
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"{what} height and width must be multiples of {multiple} (the VAE's downsampling "
                             f"factor), got {tuple(x.shape[-2:])}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, 3, H, W) in [-1, 1], H and W multiples of f -> q(z | x) over (B, latent, H/f, W/f)."""
        self._check(x, self.config.in_channels, "images", self.config.downsample_factor)
        moments = self.quant_conv(self.encoder(x))  # (B, 2 latent, H/f, W/f): mu, log sigma^2
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent, h, w), unscaled -> x (B, 3, f h, f w), roughly in [-1, 1]."""
        self._check(z, self.config.latent_channels, "latents")
        return self.decoder(self.post_quant_conv(z))  # (B, 3, f h, f w)

    def encode_to_latents(self, images: torch.Tensor, generator: torch.Generator | None = None,
                          sample: bool = False) -> torch.Tensor:
        """Images in [-1, 1] -> the diffusion model's latents z_0 = scaling_factor * z.

        z = mu (``sample=False``, deterministic) or mu + sigma * eps drawn with ``generator``.
        """
        if isinstance(images, torch.Tensor) and images.numel() and (images.min() < -1.001 or images.max() > 1.001):
            raise ValueError(f"images must be in [-1, 1], got values in [{images.min().item():.3g}, "
                             f"{images.max().item():.3g}]; map [0, 1] images with 2 * x - 1")
        posterior = self.encode(images)
        z = posterior.sample(generator) if sample else posterior.mode()  # (B, latent, H/f, W/f)
        return self.config.scaling_factor * z

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The diffusion model's latents z_0 -> images x = decode(z_0 / scaling_factor), roughly in [-1, 1]."""
        return self.decode(latents / self.config.scaling_factor)  # (B, 3, f h, f w)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Reconstruct: decode(z) with z = mu, or a sample of q(z | x) when ``sample``."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator) if sample else posterior.mode())
