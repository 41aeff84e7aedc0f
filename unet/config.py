"""The U-Net's configuration: one small dataclass, an SD v1 preset, and diffusers' config.json.

SD v1 (Rombach et al. 2022, appendix; the ``v1-inference.yaml`` of the original code):
4 latent channels in and out, channel widths 320/640/1280/1280, two ResBlocks per level,
spatial transformers (self- then cross-attention on the 77x768 CLIP context) at the first
three levels and in the middle, 8 heads, GroupNorm with 32 groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from weights.config_json import JsonConfig


@dataclass(frozen=True)
class UNetConfig(JsonConfig):
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    # Which levels (in the encoder's order) carry spatial transformers; the decoder mirrors it.
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    cross_attention_dim: int = 768
    num_heads: int = 8  # SD v1: 8 heads at every level (diffusers calls this "attention_head_dim")
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    transformer_layers_per_block: int = 1
    use_linear_projection: bool = False  # v1: proj_in/proj_out are 1x1 convolutions

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "in_channels": (1, 64), "out_channels": (1, 64), "block_out_channels": (1, 8192), "layers_per_block": (1, 16),
        "cross_attention_dim": (1, 8192), "num_heads": (1, 1024), "norm_num_groups": (1, 1024),
        "norm_eps": (1e-12, 1.0), "transformer_layers_per_block": (1, 64)}

    def __post_init__(self) -> None:
        self.check_fields()
        if len(self.block_out_channels) > 8:
            raise ValueError(f"block_out_channels has {len(self.block_out_channels)} levels; at most 8 are supported")
        n = len(self.block_out_channels)
        if n < 1 or len(self.attention_levels) != n:
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries, expected one per level "
                f"of block_out_channels ({n})"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"channel width {c} is not divisible by norm_num_groups={self.norm_num_groups}")
            if c % self.num_heads:
                raise ValueError(f"channel width {c} is not divisible by num_heads={self.num_heads}")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding MLP: 4 x the first level's channels (1280 for SD v1)."""
        return 4 * self.block_out_channels[0]

    @property
    def downsample_factor(self) -> int:
        """How much smaller the deepest feature map is than the latent: 2^(levels - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def sd_v1(cls) -> "UNetConfig":
        """Stable Diffusion v1.x (860M parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> "UNetConfig":
        """A few-hundred-thousand-parameter U-Net with SD v1's structure, for tests and CPU notebooks:
        three levels of 32/64/64 channels (the last without attention), 4 heads, 8 norm groups and a
        32-wide context."""
        return cls(block_out_channels=(32, 64, 64), attention_levels=(True, True, False),
                   cross_attention_dim=32, num_heads=4, norm_num_groups=8)

    # diffusers' config.json ------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "UNetConfig":
        """Read a diffusers ``UNet2DConditionModel`` config.json; refuse what this U-Net does not build."""
        supported = {
            "act_fn": "silu", "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
            "mid_block_type": "UNetMidBlock2DCrossAttn", "downsample_padding": 1,
            "mid_block_scale_factor": 1, "resnet_time_scale_shift": "default", "upcast_attention": False,
            "only_cross_attention": False, "dual_cross_attention": False, "class_embed_type": None,
            "addition_embed_type": None, "time_embedding_type": "positional", "conv_in_kernel": 3,
            "conv_out_kernel": 3, "encoder_hid_dim": None, "time_cond_proj_dim": None,
        }
        unsupported = {k: config[k] for k, v in supported.items() if k in config and config[k] != v}
        if unsupported:
            raise ValueError(f"unsupported diffusers U-Net options {unsupported}; this U-Net builds {supported}")
        down = list(config.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
        known = {"CrossAttnDownBlock2D", "DownBlock2D"}
        if not set(down) <= known:
            raise ValueError(f"unsupported down_block_types {down}; expected entries of {sorted(known)}")
        attention_levels = tuple(b == "CrossAttnDownBlock2D" for b in down)
        up = list(config.get("up_block_types", ()))
        mirrored = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attention_levels[::-1]]
        if up and up != mirrored:
            raise ValueError(f"up_block_types {up} do not mirror down_block_types {down}; expected {mirrored}")
        heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
        for name in ("attention_head_dim", "transformer_layers_per_block", "layers_per_block"):
            if isinstance(config.get(name), (list, tuple)):
                raise ValueError(f"per-level {name}={config[name]} is not supported; expected one int")
        return cls(
            in_channels=config.get("in_channels", 4),
            out_channels=config.get("out_channels", 4),
            block_out_channels=tuple(config.get("block_out_channels", (320, 640, 1280, 1280))),
            layers_per_block=config.get("layers_per_block", 2),
            attention_levels=attention_levels,
            cross_attention_dim=config.get("cross_attention_dim", 768),
            num_heads=heads,
            norm_num_groups=config.get("norm_num_groups", 32),
            norm_eps=config.get("norm_eps", 1e-5),
            transformer_layers_per_block=config.get("transformer_layers_per_block", 1),
            use_linear_projection=config.get("use_linear_projection", False),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers ``UNet2DConditionModel`` config that builds the same network."""
        return {
            "_class_name": "UNet2DConditionModel",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in self.attention_levels[::-1]],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": self.num_heads,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "transformer_layers_per_block": self.transformer_layers_per_block,
            "use_linear_projection": self.use_linear_projection,
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "act_fn": "silu",
        }
