"""The U-Net drawing of notebook 04 is read off the module tree: its counts must be the model's."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from toyworld.model import RECIPES  # noqa: E402
from unet.config import UNetConfig  # noqa: E402
from unet.diagram import draw_unet, unet_levels  # noqa: E402
from unet.model import UNet  # noqa: E402


@pytest.mark.parametrize("config, side", [(UNetConfig.sd_v1(), 64), (RECIPES["toy1"].unet, 8),
                                          (RECIPES["toy2-frozen"].unet, 16)], ids=["sd_v1", "toy1", "toy2"])
def test_the_levels_are_the_models(config, side):
    down, mid, up, skips = unet_levels(config, side)
    with torch.device("meta"):
        model = UNet(config)
    # every skip pushed by the encoder is popped by one decoder ResBlock at the same resolution
    assert sum(skips) == sum(len(b.resnets) for b in model.up_blocks)
    assert skips == [len(b.resnets) for b in reversed(model.up_blocks)]
    assert [b.side for b in down] == [side >> i for i in range(len(down))]
    assert [b.side for b in up] == [side >> i for i in reversed(range(len(up)))]
    assert mid.side == side >> (len(down) - 1) and mid.channels == config.block_out_channels[-1]
    assert [b.transformers > 0 for b in down] == list(config.attention_levels)
    assert [b.channels for b in down] == list(config.block_out_channels)


def test_sd_v1_as_the_paper_draws_it():
    down, mid, up, skips = unet_levels(UNetConfig.sd_v1(), 64)
    assert skips == [3, 3, 3, 3]
    assert down[0].text() == "down_blocks.0\n2 x ResBlock\n+ 2 x transformer\n320 ch, 64x64\n-> Downsample"
    assert up[0].text() == "up_blocks.0\n3 x ResBlock\n1280 ch, 8x8\n-> Upsample"
    texts = [t.get_text() for t in draw_unet(UNetConfig.sd_v1(), 64).axes[0].texts]
    assert "3 skips at 16x16" in texts
    assert any(t.startswith("mid_block\nResBlock, transformer, ResBlock") for t in texts)


def test_bad_latent_sides_are_refused():
    with pytest.raises(ValueError, match="not divisible by the U-Net's downsample factor 8"):
        unet_levels(UNetConfig.sd_v1(), 60)
    with pytest.raises(ValueError, match="latent_side must be a positive int"):
        unet_levels(UNetConfig.sd_v1(), 0)
