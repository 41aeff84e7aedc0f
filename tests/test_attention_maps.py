"""Attention-map figures (editing/attention_maps.py): per-token cross-attention maps, the principal
components of self-attention, the edit grid, and bad input.

Most tests fill an AttentionStore by hand, with ``store.record(probs, site)`` on constructed
probabilities, so every expectation is computed here from the construction: the map of a token,
the average over heads, steps and sites, and for self-attention the SVD of a block-structured
map, which has a closed form (see ``test_two_regions_...``). The last tests run the shipped toy
model once and check that the maps mean what the paper says they mean.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the figures are bare Figures, but nothing here may open a window

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from editing.attention_maps import (edit_grid, heatmaps, self_attention_components, self_attention_figure,
                                    token_heatmaps, per_token_maps)
from editing.attention_store import AttentionStore
from ldm.tokenizer import WordTokenizer
from unet.editor import Site

L = 77
TOY = Path(__file__).resolve().parents[1] / "weights" / "toy"  # the shipped toy model
PROMPT = "a big red circle on a blue background"  # tokens at positions 1..8, eos at 9
WORDS = ["a", "big", "small", "red", "blue", "circle", "square", "on", "background"]


@pytest.fixture(scope="module")
def words() -> WordTokenizer:
    return WordTokenizer(WORDS)


def site(kind: str, location: str, downsample: int, index: int = 0) -> Site:
    attn = "attn1" if kind == "self" else "attn2"
    block = "mid_block" if location == "mid" else f"{location}_blocks.{downsample - 1}"
    return Site(f"{block}.attentions.{index}.transformer_blocks.0.{attn}", kind, location, downsample - 1, index,
                downsample)


def store_with(batch: int, latent_hw: tuple[int, int], records: list[tuple[torch.Tensor, Site]]) -> AttentionStore:
    """An AttentionStore that saw ``records`` (probs, site), in order, and a latent of ``latent_hw``."""
    store = AttentionStore(batch, cross_max_size=1.0, self_max_size=1.0)
    for probs, s in records:
        store.record(probs, s)
    store.end_step(torch.zeros(1, 4, *latent_hw), 0, 0)
    return store


def shown(artist) -> torch.Tensor:
    """The array an imshow artist draws."""
    return torch.from_numpy(np.asarray(artist.get_array()))


def random_probs(items: int, heads: int, pixels: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(items, heads, pixels, columns, generator=generator).softmax(-1)  # (U, heads, N, M)


# ----------------------------------------------------------------------------------------------
# Cross-attention: token maps


def test_per_token_maps_average_heads_steps_and_sites_of_the_conditional_half(words):
    """M_bar of prompt b, token j = mean over heads, steps and the down/up sites of one size of
    probs[B + b, :, :, j] (the conditional half of the guidance batch); the mid block and the other
    size are left out."""
    g = torch.Generator().manual_seed(0)
    B, heads, steps, (h, w) = 2, 3, 2, (4, 4)
    chosen = [site("cross", "down", 1), site("cross", "up", 1, index=1)]  # size 1: 4x4
    others = [site("cross", "mid", 2), site("cross", "up", 2)]  # size 1/2: 2x2
    records, expected = [], torch.zeros(B, h * w, L)
    for _ in range(steps):
        for s in chosen + others:
            pixels = h * w // s.downsample**2
            probs = random_probs(2 * B, heads, pixels, L, g)  # (2B, heads, N, 77)
            records.append((probs, s))
            if s in chosen:
                expected += probs[B:].sum(dim=1) / (heads * steps * len(chosen))  # (B, HW, 77)
    store = store_with(B, (h, w), records)
    for b in range(B):
        tokens, maps = per_token_maps(store, words, PROMPT, prompt_index=b, size=1.0)
        assert tokens == PROMPT.split(" ")
        assert maps.shape == (8, h, w)
        want = expected[b, :, 1:9].T.reshape(8, h, w)  # positions 1..8: the prompt's tokens, bos and eos left out
        torch.testing.assert_close(maps, want, rtol=0, atol=1e-6)  # float32 sums of 12 terms of size <= 1


def test_token_map_of_a_word_is_where_its_pixels_look(words):
    """Pixels in a 2x2 block put 0.9 on "circle" (position 4) and 0.1 on bos; the others 0.9 on
    "background" (position 8): the circle's map is 0.9 on the block and 0 elsewhere, and the
    default size is the smallest recorded in down/up (here 1/2, as 1/4 on SD is its 16x16)."""
    h = w = 4
    block = torch.zeros(h, w, dtype=torch.bool)
    block[1:3, 2:4] = True
    probs = torch.zeros(1, 2, h * w, L)  # (B, heads, HW, 77), guidance 1
    probs[..., 0] = 0.1
    probs[:, :, block.flatten(), 4] = 0.9
    probs[:, :, ~block.flatten(), 8] = 0.9
    fine = torch.full((1, 2, 64, L), 1 / L)  # a uniform 8x8 map at size 1: not the default
    store = store_with(1, (8, 8), [(probs, site("cross", "down", 2)), (fine, site("cross", "up", 1))])
    tokens, maps = per_token_maps(store, words, PROMPT)
    assert maps.shape == (8, 4, 4)
    torch.testing.assert_close(maps[tokens.index("circle")], 0.9 * block.float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(maps[tokens.index("background")], 0.9 * (~block).float(), rtol=0, atol=1e-7)
    assert maps[tokens.index("red")].abs().max() == 0


def test_token_labels_are_each_tokens_text():
    """A CLIP word of several tokens gets one panel per token: "capybara" -> "cap", "y", "bara"."""
    from ldm.clip_tokenizer import CLIPTokenizer
    from tests.test_tokenizer import clip_bpe_path

    clip = CLIPTokenizer.from_bpe_file(clip_bpe_path())
    store = store_with(1, (2, 2), [(torch.full((1, 1, 4, L), 1 / L), site("cross", "down", 1))])
    tokens, maps = per_token_maps(store, clip, "a photo of a capybara")
    assert tokens == ["a", "photo", "of", "a", "cap", "y", "bara"]
    assert maps.shape == (7, 2, 2)


def test_heatmaps_scale_each_map_to_its_maximum():
    maps = torch.zeros(2, 2, 2)  # (n, h, w)
    maps[0, 0, 1] = 0.2  # peak 0.2
    maps[1] = torch.tensor([[0.05, 0.1], [0.1, 0.1]])  # peak 0.1, reached three times
    same = heatmaps(maps, (2, 2))  # no enlargement: exactly maps / max
    torch.testing.assert_close(same, maps / torch.tensor([0.2, 0.1])[:, None, None])
    up = heatmaps(maps, (8, 8))  # nearest neighbour: every cell a 4x4 block of its own value
    torch.testing.assert_close(up, same.repeat_interleave(4, 1).repeat_interleave(4, 2), rtol=0, atol=0)
    torch.testing.assert_close(heatmaps(torch.full((1, 2, 2), 0.3), (5, 7)), torch.ones(1, 5, 7))
    # a flat map stays flat: from 0 to its maximum, values 0.9..1.0 of the peak draw as 0.9..1.0
    flat = heatmaps(torch.tensor([[[0.9, 1.0], [0.95, 1.0]]]), (2, 2))
    assert flat.min() >= 0.9


def test_token_heatmaps_figure_shows_each_tokens_map(words):
    g = torch.Generator().manual_seed(1)
    store = store_with(1, (4, 4), [(random_probs(2, 2, 16, L, g), site("cross", "up", 1))])
    tokens, maps = per_token_maps(store, words, PROMPT)
    image = torch.rand(3, 32, 32, generator=g)  # (3, H, W) in [0, 1]
    fig = token_heatmaps(store, words, PROMPT, image=image)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(axes) == 1 + len(tokens)  # the sample, then one panel per token
    assert axes[0].get_title() == "sample"
    expected = heatmaps(maps, (32, 32))  # (n, 32, 32)
    for ax, token, want in zip(axes[1:], tokens, expected):
        assert ax.get_title().split("\n")[0] == token
        under, over = ax.images  # the faded image, then the map
        torch.testing.assert_close(shown(over), want)
        assert over.get_clim() == (0, 1)
    bare = token_heatmaps(store, words, PROMPT)  # no image: the maps alone, 256 px
    panels = [ax for ax in bare.axes if ax.images]
    assert len(panels) == len(tokens) and all(ax.images[0].get_array().shape == (256, 256) for ax in panels)
    fig.savefig(__import__("io").BytesIO(), format="png")  # draws without error


# ----------------------------------------------------------------------------------------------
# Self-attention: principal components


def region_map(labels: torch.Tensor) -> torch.Tensor:
    """(HW, HW): each pixel attends uniformly to the pixels of its own region (``labels`` (HW,))."""
    same = (labels[:, None] == labels[None, :]).float()  # (HW, HW)
    return same / same.sum(dim=1, keepdim=True)


def zero_row_sum_noise(pixels: int, generator: torch.Generator, scale: float = 0.01) -> torch.Tensor:
    e = scale * torch.randn(pixels, pixels, generator=generator)
    return e - e.mean(dim=1, keepdim=True)  # (HW, HW), rows sum to 0


def test_two_regions_give_one_component_that_separates_them():
    """A = region map of R1 (top-left 2x2, n1 = 4 pixels) and R2 (the other n2 = 12), N = 16. Its
    rows are 1_R1 / n1 for x in R1 and 1_R2 / n2 for x in R2, each of mean 1/N, so

        C = A - 1/N = rows (1/N)(n2/n1 on R1, -1 on R2) for x in R1, -(n1/n2) times that for x in R2:

    rank 1, ||C||_F^2 = n1 * n2/(n1 N) + n2 * n1/(n2 N) = 1, so s = (1, 0, ..., 0), and the component
    is +sqrt(n2/(n1 N)) on R1, -sqrt(n1/(n2 N)) on R2 (the larger entry, on R1, made positive).
    The store sees A +- noise (rows summing to 0) over two steps, two heads and two sites, which
    average out only if every average is taken; a mid site with other regions is left out."""
    g = torch.Generator().manual_seed(2)
    h = w = 4
    labels = torch.ones(h, w, dtype=torch.long)
    labels[:2, :2] = 0
    A = region_map(labels.flatten())  # (16, 16)
    sites = (site("self", "down", 1), site("self", "up", 1))
    step_noise = {s: zero_row_sum_noise(16, g) for s in sites}  # + at step 0, - at step 1
    records = []
    for sign in (1, -1):  # two steps
        for s in sites:
            e1, e2 = step_noise[s], zero_row_sum_noise(16, g)
            heads = torch.stack([A + sign * e1 + e2, A + sign * e1 - e2])  # (2, 16, 16), mean A + sign e1
            records.append((torch.stack([torch.eye(16).expand(2, -1, -1), heads]), s))  # (2, 2, 16, 16): [uncond, cond]
        records.append((torch.eye(16).expand(2, 2, -1, -1), site("self", "mid", 1)))  # the identity: not chosen
    store = store_with(1, (h, w), records)

    result = self_attention_components(store, n=3)
    n1, n2, N = 4, 12, 16
    want = torch.full((h, w), -(n1 / (n2 * N)) ** 0.5)
    want[:2, :2] = (n2 / (n1 * N)) ** 0.5
    # float32 storage of A (entries <= 1/4, rounding ~1e-8) and noise cancelling to ~1e-9 in float32
    torch.testing.assert_close(result.components[0], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(result.singular_values, torch.eye(16)[0], rtol=0, atol=1e-5)
    assert result.components.shape == (3, h, w) and result.sites == 2
    assert result.explained[0] > 1 - 1e-6  # the whole centred map: the others have s^2 < 1e-10; float32 result


def test_rows_are_centred_not_columns():
    """Every pixel looks at pixel 0 (a sink, like SD's bos): A = 1 e_0^T. Each row has mean 1/N, so
    C = 1 (e_0 - 1/N)^T: rank 1 with s = ||1|| ||e_0 - 1/N|| = sqrt(N) sqrt((N - 1)/N) = sqrt(N - 1),
    component (e_0 - 1/N) / ||e_0 - 1/N||. Centring the columns instead would leave nothing (every
    column is constant), so this tells the two apart."""
    N = 16
    A = torch.zeros(N, N)
    A[:, 0] = 1.0
    store = store_with(1, (4, 4), [(A[None, None], site("self", "down", 1))])
    result = self_attention_components(store, n=1)
    want = torch.full((N,), -1 / N)
    want[0] += 1
    torch.testing.assert_close(result.singular_values[0], torch.tensor((N - 1) ** 0.5), rtol=1e-6, atol=0)
    assert result.singular_values[1:].abs().max() < 1e-5  # float32 storage; the exact values are 0
    torch.testing.assert_close(result.components[0].flatten(), want / want.norm(), rtol=0, atol=1e-6)


def test_three_regions_give_rank_two_and_span_their_indicators():
    """Three regions: A = sum_r 1_r 1_r^T / n_r is the orthogonal projection P onto the span of
    the indicators, and 1/N 11^T projects onto the constant, which lies in that span; so
    C = P - 11^T/N is a projection of rank 2: s = (1, 1, 0, ...), and the top two components span
    exactly the region patterns orthogonal to the constant: V^T V = C. The latent is 4x2 (h != w),
    so folding the pixels back to (h, w) the wrong way round would break the region layout."""
    h, w = 4, 2
    labels = torch.tensor([[0, 0], [1, 1], [1, 2], [2, 2]])  # (4, 2): regions of 2, 3 and 3 pixels
    A = region_map(labels.flatten())  # (8, 8)
    store = store_with(1, (h, w), [(A[None, None], site("self", "up", 1))])
    result = self_attention_components(store, n=2)
    torch.testing.assert_close(result.singular_values, torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0]), rtol=0, atol=1e-5)
    V = result.components.flatten(1)  # (2, 8)
    C = A - 1 / 8
    torch.testing.assert_close(V.T @ V, C, rtol=0, atol=1e-5)  # the projector onto the two components
    assert result.components.shape == (2, h, w)
    for comp in result.components:  # constant on each region, as (h, w) images
        for r in range(3):
            values = comp[labels == r]
            assert values.max() - values.min() < 1e-5


def test_self_attention_uses_chosen_prompt_size_and_locations():
    """Prompt 1 of 2 at size 1/2, from the mid block when asked: the split of that map alone."""
    split_rows = region_map(torch.tensor([0, 0, 1, 1]))  # 2x2 map: top row vs bottom row
    split_cols = region_map(torch.tensor([0, 1, 0, 1]))  # left column vs right column
    uniform = torch.full((4, 4), 0.25)
    mid = torch.stack([uniform, split_cols])[:, None]  # (B=2, heads=1, 4, 4), guidance 1: prompt 1 is split_cols
    down = torch.stack([split_cols, split_rows])[:, None]
    fine = torch.full((2, 1, 16, 16), 1 / 16)  # size 1, 4x4
    store = store_with(2, (4, 4), [(mid, site("self", "mid", 2)), (down, site("self", "down", 2)),
                                   (fine, site("self", "up", 1))])
    by_rows = self_attention_components(store, prompt_index=1, size=0.5, n=1).components[0]  # down/up: split_rows
    # two regions of 2 pixels in 4: +-sqrt(n2 / (n1 N)) = +-1/2 (the closed form of the test above); the
    # entries tie in magnitude, so the sign is fixed here by the top-left pixel
    torch.testing.assert_close(by_rows * by_rows[0, 0].sign(), torch.tensor([[0.5, 0.5], [-0.5, -0.5]]),
                               rtol=0, atol=1e-6)
    by_cols = self_attention_components(store, prompt_index=1, size=0.5, n=1, locations=("mid",)).components[0]
    torch.testing.assert_close(by_cols * by_cols[0, 0].sign(), torch.tensor([[0.5, -0.5], [0.5, -0.5]]),
                               rtol=0, atol=1e-6)
    uniform_rows = self_attention_components(store, prompt_index=0, size=1.0, n=1)
    assert uniform_rows.singular_values.abs().max() < 1e-6  # identical rows: nothing left after centring


def test_self_attention_figure_shows_the_components():
    labels = torch.ones(4, 4, dtype=torch.long)
    labels[1:3, 1:3] = 0
    store = store_with(1, (4, 4), [(region_map(labels.flatten())[None, None], site("self", "down", 1))])
    result = self_attention_components(store, n=3)
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    fig = self_attention_figure(store, n=3, image=image)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 4 and axes[0].get_title() == "sample"
    for i, ax in enumerate(axes[1:]):
        torch.testing.assert_close(shown(ax.images[0]), result.components[i])
        assert ax.get_title().startswith(f"component {i}\ns = {result.singular_values[i]:.3g}")
        low, high = ax.images[0].get_clim()
        assert low == -high  # diverging colours centred on 0: the sign is the grouping


# ----------------------------------------------------------------------------------------------
# The edit grid


def test_edit_grid_shows_each_image_under_its_prompt():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))  # (B, 3, H, W)
    prompts = ["a big red circle", "a big blue circle", "a big green circle"]
    fig = edit_grid(images, prompts, title="word swap")
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 3 and fig.get_suptitle() == "word swap"
    for k, ax in enumerate(axes):
        assert ax.get_title().replace("\n", " ").endswith(prompts[k])
        assert ax.get_title().startswith("source" if k == 0 else f"target {k}")
        torch.testing.assert_close(shown(ax.images[0]), images[k].permute(1, 2, 0))


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_input(words):
    cross = store_with(2, (2, 2), [(torch.full((2, 1, 4, L), 1 / L), site("cross", "down", 1))])
    with pytest.raises(ValueError, match="holds no cross-attention maps"):
        per_token_maps(AttentionStore(2), words, PROMPT)
    with pytest.raises(ValueError, match="holds no self-attention maps"):
        self_attention_components(cross)
    with pytest.raises(ValueError, match=r"no cross-attention maps of size 0.5 .*recorded sizes there: \[1.0\]"):
        per_token_maps(cross, words, PROMPT, size=0.5)
    with pytest.raises(ValueError, match=r"prompt_index must be an int in \[0, 1\].*got 2"):
        per_token_maps(cross, words, PROMPT, prompt_index=2)
    with pytest.raises(ValueError, match=r"prompt_index must be an int in \[0, 1\].*got -1"):
        token_heatmaps(cross, words, PROMPT, prompt_index=-1)
    with pytest.raises(ValueError, match="locations must be"):
        per_token_maps(cross, words, PROMPT, locations=("left",))
    with pytest.raises(ValueError, match="tokenizer must be a PromptTokenizer"):
        per_token_maps(cross, "words", PROMPT)
    with pytest.raises(ValueError, match="store must be an AttentionStore"):
        per_token_maps({}, words, PROMPT)
    # the prompt must fit the maps' token axis: 76 tokens leave no room for bos and eos in 77
    with pytest.raises(ValueError, match="has 76 tokens"):
        per_token_maps(cross, words, " ".join(["a"] * 76))
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        per_token_maps(cross, words, "a big dog")
    short = store_with(1, (2, 2), [(torch.full((1, 1, 4, 10), 0.1), site("cross", "down", 1))])
    with pytest.raises(ValueError, match="10 token columns, but the tokenizer makes rows of 77"):
        per_token_maps(short, words, PROMPT)

    own = store_with(1, (2, 2), [(region_map(torch.tensor([0, 0, 1, 1]))[None, None], site("self", "down", 1))])
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 4\].*got 0"):
        self_attention_components(own, n=0)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 4\].*got 5"):
        self_attention_figure(own, n=5)
    with pytest.raises(ValueError, match=r"image must be a float tensor \(3, H, W\)"):
        self_attention_figure(own, n=1, image=torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"image must be in \[0, 1\]"):
        token_heatmaps(cross, words, PROMPT, image=torch.rand(3, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match=r"images must be a float tensor \(B, 3, H, W\)"):
        edit_grid(torch.rand(3, 8, 8), ["a"])
    with pytest.raises(ValueError, match="got 2 images but 1 prompts"):
        edit_grid(torch.rand(2, 3, 8, 8), ["a big red circle"])
    with pytest.raises(ValueError, match="prompts must be a list of str"):
        edit_grid(torch.rand(1, 3, 8, 8), "a big red circle")
    with pytest.raises(ValueError, match=r"maps must be a tensor \(n, h, w\)"):
        heatmaps(torch.rand(4, 4), (8, 8))


# ----------------------------------------------------------------------------------------------
# The toy model: the maps mean what the paper says


@pytest.fixture(scope="module")
def toy_edit():
    from editing.prompt_to_prompt import prompt_to_prompt
    from ldm.pipeline import StableDiffusion
    from toyworld.analyze import analyze_batch

    torch.manual_seed(0)
    sd = StableDiffusion.from_folder(TOY)
    prompts = ["a big red circle on a blue background", "a big red square on a blue background"]
    store = AttentionStore(2)
    result = prompt_to_prompt(sd, prompts, seed=0, guidance_scale=5.0, store=store, progress=False)
    masks = [torch.from_numpy(a.mask.copy()).float() for a in analyze_batch(result.images)]  # (64, 64) each
    return sd.tokenizer, prompts, store, result.images, masks


def mask_share(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(h, w): the fraction of each map pixel's 8x8 (or so) image block inside the object."""
    return F.adaptive_avg_pool2d(mask[None, None], shape)[0, 0]


def test_toy_shape_word_attends_to_the_object(toy_edit):
    """Hertz et al. Fig. 4: the map of the shape word sits on the object. Share of a token's map
    inside the analyzer's mask (pooled to the 4x4 maps, the default size 1/2), against the share a
    uniform map would have (the mask's area) and against the word "background". Measured (seed 0,
    50 steps, guidance 5): circle 0.357, square 0.545; background 0.143 / 0.166; uniform 0.160 /
    0.186. Bounds: the shape word at least 1.5x uniform (measured 2.2x, 2.9x) and 2x the background
    word (measured 2.5x, 3.3x)."""
    tokenizer, prompts, store, images, masks = toy_edit
    for b, shape_word in ((0, "circle"), (1, "square")):
        tokens, maps = per_token_maps(store, tokenizer, prompts[b], prompt_index=b)  # (8, 4, 4)
        inside = mask_share(masks[b], maps.shape[-2:])  # (4, 4)
        share = (maps * inside).sum((1, 2)) / maps.sum((1, 2))  # (8,): each token's mass inside the object
        uniform = inside.mean()
        shape, background = share[tokens.index(shape_word)], share[tokens.index("background")]
        assert shape > 1.5 * uniform, f"{shape_word}: {shape:.3f} of its map inside, uniform {uniform:.3f}"
        assert shape > 2 * background, f"{shape_word}: {shape:.3f} inside, 'background': {background:.3f}"
    fig = token_heatmaps(store, tokenizer, prompts[1], prompt_index=1, image=images[1])
    assert len([ax for ax in fig.axes if ax.images]) == 1 + len(prompts[1].split(" "))


def test_toy_first_self_attention_component_is_the_object(toy_edit):
    """The first component of the 4x4 self-attention map separates object from background: its
    correlation with the pooled object mask, measured 0.861 (circle) and 0.857 (square); bound 0.6."""
    tokenizer, prompts, store, images, masks = toy_edit
    for b in range(2):
        component = self_attention_components(store, prompt_index=b, n=2).components[0]  # (4, 4)
        inside = mask_share(masks[b], component.shape)
        r = torch.corrcoef(torch.stack([component.flatten(), inside.flatten()]))[0, 1]
        assert r > 0.6, f"prompt {b}: correlation {r:.3f} of component 0 with the object mask"
    fig = self_attention_figure(store, prompt_index=0, n=4, image=images[0])
    assert len([ax for ax in fig.axes if ax.images]) == 5


def test_the_token_maps_module_is_not_shadowed_by_a_function():
    """``import editing.token_maps as tm`` binds the attribute ``editing.token_maps``: the module,
    not a function of the same name re-exported by the package."""
    import types

    import editing.token_maps as tm

    assert isinstance(tm, types.ModuleType) and callable(tm.replacement_map)
