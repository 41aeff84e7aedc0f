"""The pipeline's two speed paths: oneDNN off for tiny sampling loops, inference_mode in text_to_image.

Both change only speed and float rounding; these tests check that the switches are scoped (the
process-wide oneDNN flag comes back, even after an error), that the size rule picks the toy
model and not SD v1, and that text_to_image hands back ordinary tensors, also to an editor.
"""
from __future__ import annotations

import pytest
import torch

from ldm.pipeline import NATIVE_CONV_MAX_ELEMENTS, native_convs, tiny_convs
from tests.test_pipeline import PROMPTS, StepRecorder, clip_folder, pipe, small  # noqa: F401 (fixtures)
from toyworld.model import toy_unet_config
from unet.config import UNetConfig
from unet.model import UNet


def test_tiny_convs_picks_the_toy_model_at_8x8_with_guidance_and_not_sd_v1():
    toy = UNet(toy_unet_config())
    assert tiny_convs(toy, 2, 8, 8)  # 2 x 2 x 64 x 8 x 8 = 16384
    assert not tiny_convs(toy, 4, 8, 8)  # two prompts: 32768
    assert not tiny_convs(toy, 2, 16, 16)  # 128 x 128 images: 65536
    # The smallest SD v1 call (one image, no guidance, 64 x 64 pixels = 8 x 8 latents) is far above
    # the cut-off; the rule reads only the config, so an unbuilt SD v1 U-Net stands in for one.
    sd_width = max(UNetConfig.sd_v1().block_out_channels)
    assert 1 * 2 * sd_width * 8 * 8 > NATIVE_CONV_MAX_ELEMENTS


def test_native_convs_restores_the_flag_even_after_an_error():
    before = torch.backends.mkldnn.enabled
    with native_convs(True):
        assert torch.backends.mkldnn.enabled is False
    assert torch.backends.mkldnn.enabled == before
    with pytest.raises(RuntimeError, match="inside"):
        with native_convs(True):
            raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled == before
    with native_convs(False):
        assert torch.backends.mkldnn.enabled == before


def test_native_convs_change_the_unet_output_only_by_float_rounding():
    torch.manual_seed(0)
    unet = UNet(toy_unet_config()).eval()
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 64)
    with torch.no_grad():
        reference = unet(x, 500, context)
        with native_convs(True):
            native = unet(x, 500, context)
    # Two float32 summation orders of the same convolutions: the outputs (of order 1) differ in the
    # last few bits, far below 1e-5; a wrong kernel would be off by the outputs' own scale.
    assert (native - reference).abs().max() <= 1e-5


def test_denoise_leaves_the_onednn_flag_as_it_found_it(pipe):  # noqa: F811
    before = torch.backends.mkldnn.enabled
    small(pipe, guidance_scale=3.0, seed=0)
    assert torch.backends.mkldnn.enabled == before


def test_text_to_image_returns_ordinary_tensors_with_and_without_an_editor(pipe):  # noqa: F811
    result = small(pipe, seed=0)
    assert not result.images.is_inference() and not result.latents.is_inference()
    result.images.mul_(255)  # an in-place update outside inference_mode works
    recorder = StepRecorder()
    small(pipe, seed=0, editor=recorder)
    # With an editor the loop runs under no_grad: what the editor keeps is an ordinary tensor.
    assert recorder.latents and not any(z.is_inference() or z.requires_grad for z in recorder.latents)
