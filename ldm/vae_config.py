"""The VAE's configuration: one small dataclass, an SD v1 preset, and diffusers' config.json.

SD v1's first stage (Rombach et al. 2022, section 3.1 and appendix; the ``first_stage_config``
of ``v1-inference.yaml``): a KL-regularised autoencoder with downsampling factor f = 8, images
(B, 3, H, W) in [-1, 1] <-> latents (B, 4, H/8, W/8). Channel widths 128/256/512/512, two
ResBlocks per encoder level (three per decoder level), GroupNorm with 32 groups, and the latents
multiplied by 0.18215 so that they have roughly unit variance for the diffusion model
(the LDM paper's "rescaling" of the latent space, section 3.1 and appendix G).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from weights.config_json import JsonConfig


@dataclass(frozen=True)
class VAEConfig(JsonConfig):
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # encoder; the decoder runs layers_per_block + 1 per level
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "in_channels": (1, 64), "out_channels": (1, 64), "latent_channels": (1, 64), "block_out_channels": (1, 8192),
        "layers_per_block": (1, 16), "norm_num_groups": (1, 1024), "scaling_factor": (1e-6, 1e6)}

    def __post_init__(self) -> None:
        self.check_fields()
        if len(self.block_out_channels) > 8:
            raise ValueError(f"block_out_channels has {len(self.block_out_channels)} levels; at most 8 are supported")
        if len(self.block_out_channels) < 1:
            raise ValueError(f"block_out_channels must have at least one level, got {self.block_out_channels}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"channel width {c} is not divisible by norm_num_groups={self.norm_num_groups}")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")

    @property
    def downsample_factor(self) -> int:
        """f = 2^(levels - 1): how much smaller the latent is than the image (8 for SD v1)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def sd_v1(cls) -> "VAEConfig":
        """Stable Diffusion v1.x's autoencoder (83.7M parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """SD v1's structure and f = 8 at a small width (four levels of 32/32/64/64 channels, one
        ResBlock per encoder level, 8 norm groups), for tests and CPU notebooks."""
        return cls(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8)

    # diffusers' config.json ------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "VAEConfig":
        """Read a diffusers ``AutoencoderKL`` config.json; refuse what this VAE does not build."""
        supported = {
            "act_fn": "silu", "shift_factor": None, "latents_mean": None, "latents_std": None,
            "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
        }
        unsupported = {k: config[k] for k, v in supported.items() if k in config and config[k] != v}
        if unsupported:
            raise ValueError(f"unsupported diffusers VAE options {unsupported}; this VAE builds {supported}")
        block_out_channels = tuple(config.get("block_out_channels", (64,)))
        for name, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = list(config.get(name, [kind] * len(block_out_channels)))
            if types != [kind] * len(block_out_channels):
                raise ValueError(f"unsupported {name} {types}; expected {len(block_out_channels)} x {kind!r}")
        return cls(
            in_channels=config.get("in_channels", 3),
            out_channels=config.get("out_channels", 3),
            latent_channels=config.get("latent_channels", 4),
            block_out_channels=block_out_channels,
            layers_per_block=config.get("layers_per_block", 1),
            norm_num_groups=config.get("norm_num_groups", 32),
            scaling_factor=config.get("scaling_factor", 0.18215),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers ``AutoencoderKL`` config that builds the same network."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "act_fn": "silu",
        }
