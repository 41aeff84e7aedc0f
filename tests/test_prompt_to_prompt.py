"""Prompt-to-Prompt's mechanics (editing/prompt_to_prompt.py, editing/attention_store.py) on tiny random
models and hand-built attention maps.

- bits: an editor with nothing to do leaves every bit of the sample; identical prompts give the
  target the source's bits; the source is never changed by the targets;
- the edit of one attention call, computed by hand: word swap (M @ R), refinement (aligned tokens
  take the source's maps, new tokens keep theirs), re-weighting, the step windows, the
  unconditional half untouched, the self-attention injection at the coarse sites only;
- the self-attention limit selects the documented sites on SD v1 and on the toy model;
- the attention store's running average and aggregation; local blending's mask;
- bad input.
"""
from __future__ import annotations


import pytest
import torch

from editing.attention_store import AttentionStore
from unet.editor import select_sites
from editing.prompt_to_prompt import (Blending, Injection, LocalBlend, PromptToPrompt, Refinement, Reweight,
                                      WordSwap, cross_replace_alphas, nearest_size, prompt_to_prompt, step_window,
                                      word_alphas)
from editing.token_maps import equalizer, refinement_map, replacement_map
from ldm.pipeline import StableDiffusion
from ldm.tokenizer import WordTokenizer
from tests.test_pipeline import WORD_TEXT, WORDS, random_parts, save_project
from toyworld.model import toy_unet_config
from unet.config import UNetConfig
from unet.editor import Editor, Site
from unet.model import UNet

STEPS = 10
SOURCE, TARGET = "a big red circle on a blue background", "a big red square on a blue background"


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> StableDiffusion:
    folder = save_project(tmp_path_factory.mktemp("p2p") / "word-model", random_parts(WORD_TEXT, 5), WordTokenizer(WORDS))
    return StableDiffusion.from_folder(folder)


def start(seed: int = 0) -> torch.Tensor:
    return torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


class PassThrough(PromptToPrompt):
    """Materialises exactly the attention maps a PromptToPrompt with the same settings would, and
    changes none: the "plain sample" through the same kernels (the explicit softmax rounds
    differently from the fused SDPA kernel, see test_the_explicit_softmax_is_close_to_sdpa)."""

    def attention_probs(self, probs, site):
        if self.store is not None:
            self.store.record(probs, site)
        return probs


def plain(sd, prompts, z, editor=None, guidance_scale=7.5):
    cond, uncond = sd.encode_prompts(prompts), sd.encode_prompts([""])
    return sd.denoise(z.expand(len(prompts), -1, -1, -1).clone(), cond, uncond, steps=STEPS,
                      guidance_scale=guidance_scale, editor=editor, progress=False)


# ----------------------------------------------------------------------------------------------
# bits


@pytest.mark.parametrize("case", [WordSwap(), Refinement()])
def test_identical_prompts_reproduce_the_plain_sample_bit_for_bit(sd, case):
    z = start()
    edit = prompt_to_prompt(sd, [SOURCE, SOURCE], case, steps=STEPS, latents=z, progress=False,
                            injection=Injection(self_max_size=1.0), blend=LocalBlend(["circle"]))
    assert torch.equal(edit.latents[1], edit.latents[0])
    # the plain sample of the same batch, through the same attention kernels
    # (its local blending, with the target equal to the source, moves nothing)
    ref = plain(sd, [SOURCE, SOURCE], z, PassThrough([SOURCE, SOURCE], sd.tokenizer, sd.unet.sites, STEPS,
                                                     injection=Injection(self_max_size=1.0),
                                                     blend=LocalBlend(["circle"])))
    assert torch.equal(edit.latents, ref)


def test_the_source_is_never_changed(sd):
    z = start(1)
    edit = prompt_to_prompt(sd, [SOURCE, TARGET, "a big red circle on a green background"], steps=STEPS,
                            latents=z, progress=False, injection=Injection(self_max_size=1.0))
    ref = plain(sd, [SOURCE, TARGET, "a big red circle on a green background"], z,
                PassThrough([SOURCE, TARGET, "a big red circle on a green background"], sd.tokenizer,
                            sd.unet.sites, STEPS, injection=Injection(self_max_size=1.0)))
    assert torch.equal(edit.latents[0], ref[0])
    assert not torch.equal(edit.latents[1], ref[1])  # the target was edited


def test_an_editor_that_changes_nothing_changes_no_bit(sd):
    z = start(2)
    none = plain(sd, [SOURCE, TARGET], z)
    idle = PromptToPrompt([SOURCE, TARGET], sd.tokenizer, sd.unet.sites, STEPS,
                          injection=Injection(cross_replace_steps=0.0, self_replace_steps=0.0))
    assert not any(idle.wants_probs(site) for site in sd.unet.sites)  # the fused kernel everywhere
    assert torch.equal(plain(sd, [SOURCE, TARGET], z, idle), none)
    assert torch.equal(plain(sd, [SOURCE, TARGET], z, Editor()), none)


def test_the_explicit_softmax_is_close_to_sdpa(sd):
    """The edit runs softmax(QK^T/sqrt(d)) @ V where plain sampling runs the fused kernel; the two
    round differently. Measured on this random model over 10 steps: 4.4e-5 max abs on latents of
    max |z| ~ 15, 3e-6 of their scale; bound 2e-5 of the scale (float32's 6e-8 per rounding over
    ~100 attention calls a step, and the random U-Net amplifies them)."""
    z = start(3)
    edit = prompt_to_prompt(sd, [SOURCE, SOURCE], steps=STEPS, latents=z, progress=False)
    none = plain(sd, [SOURCE, SOURCE], z)
    assert (edit.latents - none).abs().max() <= 2e-5 * none.abs().max()


def test_all_prompts_start_from_one_latent_the_seeds_randn(sd):
    edit = prompt_to_prompt(sd, [SOURCE, SOURCE], steps=STEPS, seed=4, progress=False,
                            injection=Injection(cross_replace_steps=0.0, self_replace_steps=0.0))
    alone = sd.text_to_image([SOURCE], steps=STEPS, seed=4, progress=False)
    # the same z_T; the batch of 2 vs 1 rounds the convolutions differently (oneDNN vs PyTorch's own
    # kernel, ldm/pipeline.py), nothing more: measured 5.2e-5 on latents of max |z| ~ 15; bound as above
    assert (edit.latents[0] - alone.latents[0]).abs().max() <= 2e-5 * alone.latents.abs().max()
    assert torch.equal(edit.latents[0], edit.latents[1])


# ----------------------------------------------------------------------------------------------
# one attention call, by hand

TOK = WordTokenizer(WORDS)
L = TOK.context_length
CROSS = Site("x.attn2", "cross", "down", 0, 0, downsample=1)
SELF_FINE = Site("x.attn1", "self", "down", 0, 0, downsample=1)
SELF_COARSE = Site("y.attn1", "self", "up", 1, 0, downsample=4)


def random_probs(batch: int, n: int, m: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, 2, n, m), generator=torch.Generator().manual_seed(seed)).softmax(-1)  # (U, heads, N, M)


def test_word_swap_is_the_source_maps_times_R():
    edit = PromptToPrompt([SOURCE, TARGET], TOK, [], STEPS)
    probs = random_probs(4, 16, L)  # [uncond 0, uncond 1, cond 0, cond 1]
    out = edit.attention_probs(probs.clone(), CROSS)
    R = replacement_map(TOK, SOURCE, TARGET)
    assert torch.equal(out[:3], probs[:3])  # both unconditional items and the source untouched
    expected = torch.einsum("hnl,lm->hnm", probs[2], R)
    torch.testing.assert_close(out[3], expected, rtol=0, atol=1e-7)  # a sum of exact products
    # after the window (0.8 of 10 steps: steps 0..7) the target keeps its own maps
    edit.begin_step(8, 100)
    assert not edit.wants_probs(CROSS)
    assert torch.equal(edit.attention_probs(probs.clone(), CROSS), probs)


def test_word_swap_of_a_multi_token_word_spreads_the_source_map():
    """CLIP splits "capybara" into 3 tokens: R is not the identity, and the product is used."""
    from ldm.clip_tokenizer import CLIPTokenizer
    from tests.test_tokenizer import clip_bpe_path

    clip = CLIPTokenizer.from_bpe_file(clip_bpe_path())
    source, target = "a cat on a mat", "a capybara on a mat"
    edit = PromptToPrompt([source, target], clip, [], STEPS)
    probs = random_probs(2, 9, clip.context_length, seed=4)
    out = edit.attention_probs(probs.clone(), CROSS)
    R = replacement_map(clip, source, target)
    torch.testing.assert_close(out[1], torch.einsum("hnl,lm->hnm", probs[0], R), rtol=0, atol=1e-7)
    # each of capybara's 3 tokens gets a third of "cat"'s map (token 2)
    torch.testing.assert_close(out[1][..., 2], probs[0][..., 2] / 3, rtol=0, atol=1e-7)


def test_refinement_takes_aligned_maps_and_keeps_new_tokens():
    target = "a big red circle on a big blue background"  # "big" added
    edit = PromptToPrompt([SOURCE, target], TOK, [], STEPS, Refinement())
    probs = random_probs(2, 9, L, seed=1)  # guidance 1: [cond 0, cond 1]
    out = edit.attention_probs(probs.clone(), CROSS)
    mapper, alphas = refinement_map(TOK, SOURCE, target)
    assert alphas[7] == 0 and alphas[8] == 1 and mapper[8] == 7  # the new "big" is target token 7
    for j in range(L):
        want = probs[0][..., mapper[j]] if alphas[j] else probs[1][..., j]
        assert torch.equal(out[1][..., j], want), j


def test_reweighting_alone_and_on_a_swap():
    probs = random_probs(2, 4, L, seed=2)
    alone = PromptToPrompt([SOURCE, SOURCE], TOK, [], STEPS, Reweight({"red": 3.0}))
    c = equalizer(TOK, SOURCE, {"red": 3.0})
    assert c[3] == 3.0 and c.sum() == L + 2
    torch.testing.assert_close(alone.attention_probs(probs.clone(), CROSS)[1], probs[0] * c, rtol=0, atol=0)
    swap = PromptToPrompt([SOURCE, TARGET], TOK, [], STEPS, Reweight({"square": -1.0}, on=WordSwap()))
    R = replacement_map(TOK, SOURCE, TARGET)
    want = torch.einsum("hnl,lm->hnm", probs[0], R) * equalizer(TOK, TARGET, {"square": -1.0})
    torch.testing.assert_close(swap.attention_probs(probs.clone(), CROSS)[1], want, rtol=0, atol=1e-7)


def test_self_attention_is_injected_at_coarse_sites_during_its_window():
    edit = PromptToPrompt([SOURCE, TARGET], TOK, [], STEPS,
                          injection=Injection(self_replace_steps=0.4, self_max_size=0.25))
    probs = random_probs(4, 16, 16, seed=3)
    assert not edit.wants_probs(SELF_FINE) and edit.wants_probs(SELF_COARSE)
    assert torch.equal(edit.attention_probs(probs.clone(), SELF_FINE), probs)
    out = edit.attention_probs(probs.clone(), SELF_COARSE)
    assert torch.equal(out[:3], probs[:3]) and torch.equal(out[3], probs[2])
    edit.begin_step(4, 500)  # 0.4 of 10 steps: steps 0..3
    assert not edit.wants_probs(SELF_COARSE)
    assert torch.equal(edit.attention_probs(probs.clone(), SELF_COARSE), probs)


def test_step_windows_and_per_word_alphas():
    assert step_window("s", 0.8, 50) == (0, 40)
    assert step_window("s", (0.2, 0.5), 10) == (2, 5)
    assert step_window("s", 0, 10) == (0, 0)
    alphas = cross_replace_alphas(TOK, [TARGET], 10, {"default": 0.8, "square": (0.1, 0.3)})
    assert alphas.shape == (10, 1, L)
    j = TOK.word_token_indices(TARGET, "square")[0]  # 4
    assert alphas[:, 0, j].tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    others = [k for k in range(L) if k != j]
    assert alphas[:8, 0, others].eq(1).all() and alphas[8:, 0, others].eq(0).all()
    # no "default": every other token is injected at every step, as the official code does
    assert cross_replace_alphas(TOK, [TARGET], 10, {"square": 0.5})[:, 0, 0].eq(1).all()


# ----------------------------------------------------------------------------------------------
# which sites


def meta_sites(config: UNetConfig) -> list[Site]:
    with torch.device("meta"):  # sites are fixed at construction; no weights are allocated
        return UNet(config).sites


def test_the_self_attention_limit_selects_the_documented_sites():
    sd_sites = meta_sites(UNetConfig.sd_v1())
    # SD v1 at 64x64 latents: 16x16 and below = down_blocks.2 (2), the middle (8x8), up_blocks.1 (3)
    assert [s.name.split(".transformer_blocks")[0] for s in select_sites(sd_sites, "self", 0.25)] == [
        "down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "mid_block.attentions.0",
        "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]
    assert len(select_sites(sd_sites, "self", 1.0)) == 16
    toy_sites = meta_sites(toy_unet_config())
    # the toy model at 8x8 latents has maps of side 8 and 4: 1/4 of its latent (2x2) is none of them
    assert select_sites(toy_sites, "self", 0.25) == []
    assert [s.name.split(".transformer_blocks")[0] for s in select_sites(toy_sites, "self", 0.5)] == [
        "down_blocks.1.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1"]
    # local blending reads the down/up cross maps nearest to 1/4: SD's 16x16, the toy's 4x4
    assert nearest_size(sd_sites, 0.25) == 0.25 and nearest_size(toy_sites, 0.25) == 0.5


# ----------------------------------------------------------------------------------------------
# the store and local blending


def test_the_store_averages_conditional_maps_over_steps_and_sites():
    store = AttentionStore(2, cross_max_size=1.0, self_max_size=0.5)
    a = Site("d.attn2", "cross", "down", 0, 0, downsample=2)
    b = Site("u.attn2", "cross", "up", 0, 0, downsample=2)
    fine = Site("f.attn1", "self", "down", 0, 0, downsample=1)
    assert store.records(a) and not store.records(fine)
    steps = [random_probs(4, 16, L, seed=s) for s in range(3)]
    for probs in steps:
        store.record(probs, a)
        store.record(2 * probs, b)
        store.record(probs, fine)  # ignored: a self map of full size
    mean = torch.stack([p[2:].mean(1) for p in steps]).mean(0)  # (2, 16, L): conditional, heads averaged
    torch.testing.assert_close(store.average("d.attn2"), mean)
    agg = store.aggregate("cross", 0.5, prompt=1)  # (4, 4, L): the mean of mean and 2 * mean
    torch.testing.assert_close(agg, 1.5 * mean[1].reshape(4, 4, L))
    assert store.nbytes == 2 * 2 * 16 * L * 4
    with pytest.raises(ValueError, match="no self-attention maps"):
        store.aggregate("self")


def test_the_store_keeps_the_maps_the_targets_used():
    """During the injection the store records a target's edited maps, not its own: the official
    store holds the tensors the edit overwrites in place, so its local blending reads those too."""
    store = AttentionStore(2)
    edit = PromptToPrompt([SOURCE, SOURCE], TOK, [], STEPS, store=store)  # identity swap: R = I
    probs = random_probs(4, 16, L, seed=5)
    edit.attention_probs(probs.clone(), CROSS)
    recorded = store.average(CROSS.name)  # (2, 16, L)
    torch.testing.assert_close(recorded[1], recorded[0], rtol=0, atol=1e-7)  # the target used the source's maps
    assert not torch.allclose(recorded[1], probs[3].mean(0))  # which are not the target's own
    edit.begin_step(8, 100)  # after the window the target's own maps are recorded
    edit.attention_probs(probs.clone(), CROSS)
    torch.testing.assert_close(store.average(CROSS.name)[1], (probs[2].mean(0) + probs[3].mean(0)) / 2)


def test_local_blending_keeps_the_source_outside_the_words_attention():
    store = AttentionStore(2)
    site = Site("d.attn2", "cross", "down", 0, 0, downsample=2)
    probs = torch.zeros(4, 1, 16, L)  # (U, heads, 4x4 pixels, L)
    probs[..., 0] = 1.0  # every pixel attends to bos ...
    probs[2, 0, 5, :] = 0.0
    probs[2, 0, 5, 4] = 1.0  # ... but the source's pixel (1, 1) attends to "circle"
    store.record(probs, site)
    store.end_step(torch.zeros(2, 4, 8, 8), 0, 0)
    words = word_alphas(TOK, [SOURCE, TARGET], ["circle", "square"])
    # the default dilation, 1/16 of the side, is radius round(4 / 16) = 0 cells on a 4x4 map:
    # the hot pixel (1, 1) alone, upsampled x2 -> latent rows/cols 2..3
    expected = torch.zeros(8, 8)
    expected[2:4, 2:4] = 1
    assert torch.equal(Blending(words, 0.5, 0).mask(store, (8, 8))[0, 0], expected)
    # dilation 1/4: radius 1, a 3x3 max-pool -> rows/cols 0..2, upsampled x2 -> 0..5
    blend = Blending(words, 0.5, 0, dilation=0.25)
    mask = blend.mask(store, (8, 8))  # (2, 1, 8, 8)
    expected = torch.zeros(8, 8)
    expected[:6, :6] = 1
    assert torch.equal(mask[0, 0], expected) and torch.equal(mask[1, 0], expected)  # the target ORs the source's
    source, target = torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8)
    out = blend(torch.cat([source, target]), store)
    assert torch.equal(out[0], source[0]) and torch.equal(out[1], expected.expand(4, 8, 8))


def test_blending_in_a_sample_changes_only_the_masked_region_of_the_target(sd):
    """A random model attends to "circle" almost evenly (normalised maps 0.68..1), so a threshold
    of 0.95 is what leaves an outside here; the trained toy model's masks are tested elsewhere."""
    z = start(5)
    edit = prompt_to_prompt(sd, [SOURCE, TARGET], steps=STEPS, latents=z, progress=False,
                            blend=LocalBlend(["circle"], start=0.0, size=1.0, threshold=0.95))
    mask = edit.editor.blend.mask(edit.editor.store, (8, 8))[1, 0].bool()  # the last step's mask
    assert 0 < mask.sum() < 64
    assert torch.equal(edit.latents[1][:, ~mask], edit.latents[0][:, ~mask])


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([SOURCE], {}, "at least two prompts"),
    (SOURCE, {}, "at least two prompts"),
    ([SOURCE, "a big red square"], {}, "same number of words: source 'a big red circle on a blue background' "
                                       "has 8 words, target 'a big red square' has 4"),
    ([SOURCE, TARGET], {"blend": LocalBlend(["square", "green"])}, "blend word 'green' is in none of the prompts"),
    ([SOURCE, TARGET], {"edit": Reweight({"green": 2.0})}, "word 'green' is not among the words"),
    ([SOURCE, TARGET], {"edit": "replace"}, "edit must be WordSwap(), Refinement() or Reweight"),
    ([SOURCE, TARGET], {"injection": {"cross_replace_steps": 0.5}}, "injection must be an Injection"),
    ([SOURCE, TARGET], {"blend": ["circle"]}, "blend must be a LocalBlend(words, ...)"),
    ([SOURCE, TARGET], {"injection": Injection(cross_replace_steps={"green": 0.5})},
     "word 'green', which is in none of the target"),
    ([SOURCE, " ".join(["a"] * 80)], {"edit": Refinement()}, "has 80 tokens"),
])
def test_bad_input(sd, prompts, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PromptToPrompt(prompts, sd.tokenizer, sd.unet.sites, STEPS, **kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: Reweight({}), "non-empty dict"),
    (lambda: Reweight({"red": float("nan")}), "finite numbers"),
    (lambda: Reweight({"red": 2.0}, on=Reweight({"red": 2.0})), "on=...\\) takes WordSwap"),
    (lambda: Injection(cross_replace_steps=1.5), "cross_replace_steps"),
    (lambda: Injection(cross_replace_steps={"square": (0.5, 0.2)}), "cross_replace_steps\\['square'\\]"),
    (lambda: Injection(self_replace_steps=(0.5, 0.2)), "self_replace_steps"),
    (lambda: Injection(self_max_size=0), "self_max_size"),
    (lambda: LocalBlend("circle"), "non-empty list of words"),
    (lambda: LocalBlend([]), "non-empty list of words"),
    (lambda: LocalBlend(["circle"], threshold=1.0), "threshold"),
    (lambda: LocalBlend(["circle"], start=1.5), "start"),
    (lambda: LocalBlend(["circle"], size=0), "size"),
    (lambda: LocalBlend(["circle"], dilation=-0.1), "dilation"),
])
def test_the_options_objects_check_themselves(make, message):
    """Each option is checked where it is declared, before any prompt or model is at hand."""
    with pytest.raises(ValueError, match=message):
        make()


def test_the_options_objects_keep_their_own_copies():
    scales, windows, words = {"red": 2.0}, {"default": 0.8}, ["circle"]
    edit, injection, blend = Reweight(scales), Injection(cross_replace_steps=windows), LocalBlend(words)
    scales["red"], windows["default"], words[0] = 9.0, 0.1, "square"
    assert edit.scales == {"red": 2.0} and injection.cross_replace_steps == {"default": 0.8}
    assert blend.words == ("circle",)


def test_bad_calls(sd):
    edit = PromptToPrompt([SOURCE, TARGET], sd.tokenizer, sd.unet.sites, STEPS)
    with pytest.raises(ValueError, match="step 10 is outside the 10 steps"):
        edit.begin_step(10, 1)
    with pytest.raises(ValueError, match="the U-Net batch has 3 items"):
        edit.attention_probs(random_probs(3, 4, L), CROSS)
    with pytest.raises(ValueError, match="the store was made for 3 prompts"):
        PromptToPrompt([SOURCE, TARGET], sd.tokenizer, sd.unet.sites, STEPS, store=AttentionStore(3))
    with pytest.raises(ValueError, match="one \\(1, 4, h, w\\)"):
        prompt_to_prompt(sd, [SOURCE, TARGET], steps=STEPS, latents=torch.zeros(2, 4, 8, 8), progress=False)
    with pytest.raises(ValueError, match="seed or generator"):
        prompt_to_prompt(sd, [SOURCE, TARGET], steps=STEPS, seed=1, generator=torch.Generator(), progress=False)


# ----------------------------------------------------------------------------------------------
# real images: editing starts from an inversion


def test_an_edit_of_an_inverted_image_starts_from_its_z_T_with_its_per_step_null_texts(sd):
    from editing.null_text import negative_prompt_inversion

    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(6))
    inversion = negative_prompt_inversion(sd, image, SOURCE, steps=STEPS, guidance_scale=7.5, progress=False)
    edit = prompt_to_prompt(sd, [SOURCE, SOURCE], inversion=inversion, progress=False,
                            injection=Injection(cross_replace_steps=0.0, self_replace_steps=0.0))
    # nothing injected: the source row is the inversion's own reconstruction (batch 2 vs 1 rounds the
    # convolutions differently: measured 2.0e-5 on latents of max |z| ~ 4.9, 4e-6 of it; bound 2e-5 of the scale)
    alone = inversion.reconstruct(sd, progress=False)
    assert (edit.latents[0] - alone[0]).abs().max() <= 2e-5 * alone.abs().max()
    with pytest.raises(ValueError, match="not the prompt the image was inverted with"):
        prompt_to_prompt(sd, [TARGET, SOURCE], inversion=inversion, progress=False)
    with pytest.raises(ValueError, match="with an inversion the start is its z_T"):
        prompt_to_prompt(sd, [SOURCE, TARGET], inversion=inversion, seed=1, progress=False)
