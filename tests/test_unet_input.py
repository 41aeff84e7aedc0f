"""Bad input to the U-Net: a ValueError (TypeError for a non-editor) that names the value and what was
expected, raised by ``UNet.check_inputs`` before any layer runs."""
from __future__ import annotations

import pytest
import torch

from unet import Editor, UNet, UNetConfig


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UNet(UNetConfig.tiny()).eval()  # in_channels 4, downsample factor 4, cross_attention_dim 32


def good(batch: int = 2):
    return torch.randn(batch, 4, 16, 16), torch.tensor([1, 2][:batch]), torch.randn(batch, 77, 32)


def test_good_input_runs(tiny):
    x, t, context = good()
    with torch.no_grad():
        assert tiny(x, t, context).shape == (2, 4, 16, 16)
        assert tiny(x, 7, context).shape == (2, 4, 16, 16)  # a scalar t serves the whole batch


@pytest.mark.parametrize("x, match", [
    (torch.randn(2, 3, 16, 16), r"x has 3 channels \(shape \(2, 3, 16, 16\)\), expected in_channels=4"),
    (torch.randn(2, 4, 18, 16), r"spatial size 18x16 is not divisible by the U-Net's downsample factor 4"),
    (torch.randn(2, 4, 16, 10), r"spatial size 16x10 is not divisible"),
    (torch.randn(4, 16, 16), r"x must be a \(B, 4, H, W\) tensor, got \(4, 16, 16\)"),
    ([[1.0]], r"x must be a \(B, 4, H, W\) tensor, got list"),
])
def test_bad_x(tiny, x, match):
    _, t, context = good()
    with pytest.raises(ValueError, match=match):
        tiny(x, t, context)


@pytest.mark.parametrize("context, match", [
    (torch.randn(2, 77, 31), r"context has last dim 31 \(shape \(2, 77, 31\)\), expected cross_attention_dim=32"),
    (torch.randn(77, 32), r"context must be a \(B, tokens, 32\) tensor, got \(77, 32\)"),
    (torch.randn(1, 77, 32), r"context has batch 1, expected x's batch 2"),
    (None, r"context must be a \(B, tokens, 32\) tensor, got NoneType"),
])
def test_bad_context(tiny, context, match):
    x, t, _ = good()
    with pytest.raises(ValueError, match=match):
        tiny(x, t, context)


@pytest.mark.parametrize("t, match", [
    (torch.tensor([1, 2, 3]), r"t has shape \(3,\), expected a scalar or shape \(2,\) matching x's batch"),
    (torch.tensor([[1], [2]]), r"t has shape \(2, 1\), expected a scalar or shape \(2,\)"),
    (torch.tensor([True, False]), r"t must hold real timesteps, got dtype torch.bool"),
])
def test_bad_t(tiny, t, match):
    x, _, context = good()
    with pytest.raises(ValueError, match=match):
        tiny(x, t, context)


def test_editor_must_be_an_editor(tiny):
    x, t, context = good()
    with pytest.raises(TypeError, match=r"editor must be an unet.Editor or None, got dict"):
        tiny(x, t, context, editor={})


class WrongProbs(Editor):
    def wants_probs(self, site) -> bool:
        return True

    def attention_probs(self, probs, site):
        return probs[..., :-1]  # drops the last column


class WrongResidual(Editor):
    def resnet_residual(self, h, site):
        return h.mean(dim=1)  # (B, H, W): lost the channels


class WrongQK(Editor):
    def attention_qk(self, q, k, site):
        return q.transpose(1, 2), k  # (B, N, heads, d)


@pytest.mark.parametrize("editor, match", [
    (WrongProbs(), r"editor's attention_probs at site down_blocks.0.attentions.0.transformer_blocks.0.attn1 "
                   r"returned \(2, 4, 256, 255\), expected shape \(2, 4, 256, 256\)"),
    (WrongResidual(), r"editor's resnet_residual at site down_blocks.0.resnets.0 returned \(2, 16, 16\), "
                      r"expected shape \(2, 32, 16, 16\)"),
    (WrongQK(), r"editor's attention_qk \(q\) at site down_blocks.0.attentions.0.transformer_blocks.0.attn1 "
                r"returned \(2, 256, 4, 8\), expected shape \(2, 4, 256, 8\)"),
])
def test_editor_returning_a_wrong_shape_names_the_site(tiny, editor, match):
    x, t, context = good()
    with pytest.raises(ValueError, match=match), torch.no_grad():
        tiny(x, t, context, editor=editor)
