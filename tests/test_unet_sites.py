"""The editor extension point: every site visited once per forward, in ``UNet.sites`` order, with the
documented tensor shapes; site names are module names; and what an editor returns takes effect.

The SD v1 checks run on the meta device (shapes without memory or arithmetic); the rest on
``UNetConfig.tiny()`` with real numbers.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from unet import Editor, RecordingEditor, Site, UNet, UNetConfig

LATENT = 16  # tiny: latent side for real forwards


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UNet(UNetConfig.tiny()).eval()


@pytest.fixture(scope="module")
def sd_meta():
    with torch.device("meta"):
        return UNet(UNetConfig.sd_v1())


def tiny_inputs(config: UNetConfig, batch: int = 2, tokens: int = 77):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, LATENT, LATENT, generator=g)
    context = torch.randn(batch, tokens, config.cross_attention_dim, generator=g)
    return x, torch.tensor([20, 600][:batch]), context


def resnet_channels(config: UNetConfig, site: Site) -> int:
    """Output width of a ResBlock, from the config alone (not from the model under test)."""
    widths = config.block_out_channels
    if site.location == "down":
        return widths[site.block]
    if site.location == "mid":
        return widths[-1]
    return widths[::-1][site.block]


def check_records(model: UNet, editor: RecordingEditor, batch: int, height: int, width: int, tokens: int) -> None:
    """Every site once, in order, with the shapes the docstrings promise."""
    config = model.config
    heads = config.num_heads
    per_site = [r for r in editor.records if r.method != "attention_qk"]
    assert [r.site for r in per_site] == model.sites  # visit order == UNet.sites, each exactly once
    qk = [r for r in editor.records if r.method == "attention_qk"]
    assert [r.site for r in qk] == [s for s in model.sites if s.is_attention]
    for record in editor.records:
        site = record.site
        h, w = height // site.downsample, width // site.downsample
        if site.kind == "resnet":
            assert record.shapes == ((batch, resnet_channels(config, site), h, w),)
            continue
        channels = resnet_channels(config, site)  # a spatial transformer keeps its ResBlock's width
        m = h * w if site.kind == "self" else tokens
        if record.method == "attention_probs":
            assert record.shapes == ((batch, heads, h * w, m),)  # (B, heads, HW, HW) or (B, heads, HW, 77)
        else:
            d = channels // heads
            assert record.shapes == ((batch, heads, h * w, d), (batch, heads, m, d))  # q, k


def test_every_site_visited_once_in_order_with_documented_shapes_tiny(tiny):
    x, t, context = tiny_inputs(tiny.config)
    editor = RecordingEditor(probs=True)
    with torch.no_grad():
        tiny(x, t, context, editor=editor)
    check_records(tiny, editor, 2, LATENT, LATENT, 77)


def test_sd_v1_sites_shapes_on_meta(sd_meta):
    """SD v1 at a 64x64 latent (512x512 pixels): cross maps (2, 8, 4096, 77) at full resolution, etc."""
    editor = RecordingEditor(probs=True)
    with torch.device("meta"):
        out = sd_meta(torch.zeros(2, 4, 64, 64), torch.tensor([1, 2]), torch.zeros(2, 77, 768), editor=editor)
    assert out.shape == (2, 4, 64, 64)
    check_records(sd_meta, editor, 2, 64, 64, 77)
    probs = {r.site.name: r.shapes[0] for r in editor.records if r.method == "attention_probs"}
    assert probs["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == (2, 8, 4096, 77)
    assert probs["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == (2, 8, 4096, 4096)
    assert probs["mid_block.attentions.0.transformer_blocks.0.attn2"] == (2, 8, 64, 77)
    assert probs["up_blocks.1.attentions.2.transformer_blocks.0.attn1"] == (2, 8, 256, 256)


def test_sd_v1_site_counts(sd_meta):
    sites = sd_meta.sites
    kinds = Counter(s.kind for s in sites)
    # 22 ResBlocks: 4 down levels x 2 + mid 2 + 4 up levels x 3; 16 spatial transformers:
    # 3 down levels x 2 + mid 1 + 3 up levels x 3, each one self- and one cross-attention.
    assert kinds == {"resnet": 22, "self": 16, "cross": 16}
    assert Counter((s.kind, s.location) for s in sites if s.kind == "cross") == {
        ("cross", "down"): 6, ("cross", "mid"): 1, ("cross", "up"): 9}
    # Cross-attention sites per resolution: 2 down + 3 up at 64, 32 and 16; the mid block's one at 8.
    assert Counter(s.downsample for s in sites if s.kind == "cross") == {1: 5, 2: 5, 4: 5, 8: 1}
    assert Counter(s.downsample for s in sites if s.kind == "resnet") == {1: 5, 2: 5, 4: 5, 8: 7}


@pytest.mark.parametrize("model_name", ["tiny", "sd_meta"])
def test_site_names_are_module_names(model_name, request):
    model = request.getfixturevalue(model_name)
    modules = dict(model.named_modules())
    names = [s.name for s in model.sites]
    assert len(set(names)) == len(names)
    for site in model.sites:
        assert modules[site.name].site is site  # the module at that path carries that very site
        prefix = {"down": f"down_blocks.{site.block}.", "mid": "mid_block.", "up": f"up_blocks.{site.block}."}
        assert site.name.startswith(prefix[site.location])
        part = "resnets" if site.kind == "resnet" else "attentions"
        assert f".{part}.{site.index}" in site.name
        if site.is_attention:
            assert site.name.endswith(f"transformer_blocks.{site.layer}.{'attn1' if site.kind == 'self' else 'attn2'}")
    # and no module holds a site that UNet.sites leaves out
    assert {n for n, m in modules.items() if hasattr(m, "site")} == set(names)


def test_two_transformer_layers_get_their_own_sites():
    config = UNetConfig(block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=1,
                        cross_attention_dim=32, num_heads=2, norm_num_groups=8, transformer_layers_per_block=2)
    with torch.device("meta"):
        model = UNet(config)
        editor = RecordingEditor(probs=True)
        model(torch.zeros(1, 4, 8, 8), 5, torch.zeros(1, 3, 32), editor=editor)
    check_records(model, editor, 1, 8, 8, 3)
    # down 1 x 1 + mid 1 + up 1 x 2 spatial transformers, two layers each, self + cross
    assert sum(s.is_attention for s in model.sites) == 4 * 2 * 2
    assert {s.layer for s in model.sites if s.is_attention} == {0, 1}


def test_qk_only_editor_keeps_fused_attention(tiny):
    """With wants_probs False everywhere, attention_qk sees every attention site and no map is materialised."""
    x, t, context = tiny_inputs(tiny.config)
    editor = RecordingEditor(probs=False)
    with torch.no_grad():
        tiny(x, t, context, editor=editor)
    methods = Counter(r.method for r in editor.records)
    n_attention = sum(s.is_attention for s in tiny.sites)
    assert methods == {"attention_qk": n_attention, "resnet_residual": len(tiny.sites) - n_attention}


# ---------------------------------------------------------------------------------------------
# the extension point has effect


class ZeroToken(Editor):
    """Prompt-to-Prompt-style: remove token ``token``'s column from every cross-attention map."""

    def __init__(self, token: int) -> None:
        self.token = token

    def wants_probs(self, site: Site) -> bool:
        return site.kind == "cross"

    def attention_probs(self, probs, site):
        probs = probs.clone()
        probs[..., self.token] = 0  # (B, heads, HW, 77)
        return probs


class ScaleResidual(Editor):
    """Plug-and-Play-style: change the residual branch of one ResBlock."""

    def __init__(self, name: str, scale: float) -> None:
        self.name, self.scale = name, scale

    def resnet_residual(self, h, site):
        return h * self.scale if site.name == self.name else h


class UniformQueries(Editor):
    """Zero every self-attention query: each pixel then attends uniformly to all pixels."""

    def attention_qk(self, q, k, site):
        return (torch.zeros_like(q), k) if site.kind == "self" else (q, k)


@pytest.mark.parametrize("editor", [ZeroToken(3), ScaleResidual("mid_block.resnets.0", 0.0), UniformQueries()],
                         ids=["attention_probs", "resnet_residual", "attention_qk"])
def test_editor_changes_the_output(tiny, editor):
    x, t, context = tiny_inputs(tiny.config)
    with torch.no_grad():
        plain = tiny(x, t, context)
        same = tiny(x, t, context, editor=Editor())
        edited = tiny(x, t, context, editor=editor)
    assert torch.equal(plain, same)  # the base Editor is a true no-op (same fused kernels)
    # fp32 noise between the two attention paths is ~1e-6 (see test_unet_parity); an edit moves far more
    assert (edited - plain).abs().max() > 1e-3


class OneHotCross(Editor):
    """Every pixel's cross-attention goes entirely to token 0."""

    def wants_probs(self, site: Site) -> bool:
        return site.kind == "cross"

    def attention_probs(self, probs, site):
        one_hot = torch.zeros_like(probs)  # (B, heads, HW, M)
        one_hot[..., 0] = 1
        return one_hot


def test_returned_probabilities_are_what_multiplies_v(tiny):
    """With all cross-attention on token 0, tokens 1.. cannot reach the output (they do without the edit)."""
    x, t, context = tiny_inputs(tiny.config)
    other = context.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])  # same token 0, different tokens 1..76
    with torch.no_grad():
        edited, edited_other = tiny(x, t, context, editor=OneHotCross()), tiny(x, t, other, editor=OneHotCross())
        plain, plain_other = tiny(x, t, context), tiny(x, t, other)
    # 1 * v_0 + 0 * v_j is exactly v_0 in floating point, so the two outputs are bitwise equal.
    assert torch.equal(edited, edited_other)
    assert (plain - plain_other).abs().max() > 1e-3


class ZeroCrossQueries(Editor):
    """Zero the cross-attention queries; ``probs`` chooses the fused or the explicit path."""

    def __init__(self, probs: bool) -> None:
        self.probs = probs

    def wants_probs(self, site: Site) -> bool:
        return self.probs

    def attention_qk(self, q, k, site):
        return (torch.zeros_like(q), k) if site.kind == "cross" else (q, k)


def test_attention_qk_feeds_both_attention_paths(tiny):
    """The (q, k) an editor returns are used whether or not it materialises the probabilities."""
    x, t, context = tiny_inputs(tiny.config)
    with torch.no_grad():
        plain = tiny(x, t, context)
        fused = tiny(x, t, context, editor=ZeroCrossQueries(probs=False))
        explicit = tiny(x, t, context, editor=ZeroCrossQueries(probs=True))
    assert (fused - plain).abs().max() > 1e-3
    # fused vs explicit softmax differ by fp32 rounding only: ~1e-6 measured in test_unet_parity
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5)
