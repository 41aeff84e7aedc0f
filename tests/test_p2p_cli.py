"""python -m ldm.cli.p2p: the written figures are the library's results, and bad input exits with status 2.

Everything runs the shipped toy model (weights/toy) with 10 steps or fewer, so each command takes
about a second on one CPU thread. The grid's panels are compared with ``prompt_to_prompt`` called
with the same arguments in this process: the same computation, so after the same rounding to 8
bits (``to_pil``) the pixels must be equal, not merely close.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editing.attention_maps import token_heatmaps
from editing.attention_store import AttentionStore
from editing.null_text import negative_prompt_inversion, null_text_inversion
from ldm.cli.p2p import cross_window, main, window
from ldm.cli.common import captioned_grid, stack_figures, wrap
from editing.prompt_to_prompt import Injection, LocalBlend, Refinement, Reweight, WordSwap, prompt_to_prompt
from ldm.images import load_image, to_pil
from ldm.pipeline import StableDiffusion
from ldm.figure_style import GAP, enlargement
from toyworld.model import TOY_GUIDANCE_SCALE
from toyworld.render import render
from toyworld.world import Scene

TOY = Path(__file__).resolve().parents[1] / "weights" / "toy"
SIDE = 64  # the toy model's images are 64 x 64
PROMPTS = ["a big red circle", "a big blue circle", "a big red square"]
COMMON = ["--weights", str(TOY), "--steps", "10", "--guidance", str(TOY_GUIDANCE_SCALE), "--quiet"]


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    torch.manual_seed(0)
    return StableDiffusion.from_folder(TOY)


@pytest.fixture
def red_circle(tmp_path) -> Path:
    """A toy-world image the source prompt describes, as an 8-bit PNG."""
    path = tmp_path / "red_circle.png"
    rgb = render(Scene("circle", "red", "big", "center", "white"))  # (64, 64, 3) in [0, 1]
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    return path


def grid_panels(grid: np.ndarray, count: int, side: int = SIDE) -> list[np.ndarray]:
    """The ``count`` panels of a captioned grid, each read back at ``side`` pixels: the grid enlarges a
    panel K = ceil(192 / side) times by pixel repetition (ldm.figure_style) and sets panels GAP px apart."""
    k, shown = enlargement(side), enlargement(side) * side
    assert grid.shape[1] == count * shown + (count + 1) * GAP and grid.shape[0] > GAP + shown  # captions beneath
    out = []
    for n in range(count):
        x = GAP + n * (shown + GAP)
        block = grid[GAP:GAP + shown, x:x + shown]  # (shown, shown, 3)
        assert np.array_equal(block, block[::k, ::k].repeat(k, 0).repeat(k, 1))  # every pixel a k x k block
        out.append(block[::k, ::k])
    return out


def panels(path: Path, count: int) -> list[np.ndarray]:
    """The ``count`` image panels of a written grid, at the model's SIDE pixels."""
    return grid_panels(np.asarray(Image.open(path).convert("RGB")), count)


def pixels(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> B uint8 arrays, rounded as the CLI rounds them."""
    return [np.asarray(im) for im in to_pil(images)]


# ---------------------------------------------------------------------------------- what is written
@pytest.mark.parametrize("prompts, flags, options", [
    (PROMPTS, ["--reweight", "big=1.5", "--blend", "circle", "square", "--cross-steps", "default=0.8,square=0.1:0.5",
               "--self-steps", "0,0.5", "--self-size", "0.5"],
     dict(edit=Reweight({"big": 1.5}, on=WordSwap()), blend=LocalBlend(["circle", "square"]),
          injection=Injection(cross_replace_steps={"default": 0.8, "square": (0.1, 0.5)},
                              self_replace_steps=(0.0, 0.5), self_max_size=0.5))),
    (["a red circle", "a red square"], ["--mode", "reweight", "--reweight", "red=3", "square=-1"],
     dict(edit=Reweight({"red": 3.0, "square": -1.0}))),
    (["a circle", "a small green circle"], ["--mode", "refine"], dict(edit=Refinement())),  # replace would refuse these
    (PROMPTS[:2], ["--blend", "circle", "--blend-start", "0", "--blend-threshold", "0.9", "--blend-size", "1",
                   "--blend-dilation", "0"],
     dict(blend=LocalBlend(["circle"], start=0.0, threshold=0.9, size=1.0, dilation=0.0))),
])
def test_cli_grid_holds_prompt_to_prompts_images(prompts, flags, options, sd, tmp_path, capsys):
    out = tmp_path / "out" / "edit.png"
    assert main([*COMMON, "--prompts", *prompts, "--seed", "3", "--out", str(out), *flags]) == 0
    assert f"wrote {out} ({len(prompts)} panels, left to right: {prompts})" in capsys.readouterr().out
    want = prompt_to_prompt(sd, prompts, guidance_scale=TOY_GUIDANCE_SCALE, steps=10, seed=3, progress=False,
                            **options).images  # (B, 3, 64, 64)
    for k, (got, expected) in enumerate(zip(panels(out, len(prompts)), pixels(want))):
        assert np.array_equal(got, expected), f"panel {k} differs from prompt_to_prompt's image {k}"
    if options.get("edit") != Refinement():  # the flags matter: with the defaults the edits come out differently
        plain = prompt_to_prompt(sd, prompts, guidance_scale=TOY_GUIDANCE_SCALE, steps=10, seed=3,
                                 progress=False).images
        assert any(not np.array_equal(a, b) for a, b in zip(pixels(plain)[1:], pixels(want)[1:]))
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


def test_cli_seed_default_is_zero(sd, tmp_path):
    out = tmp_path / "edit.png"
    assert main([*COMMON, "--prompts", *PROMPTS[:2], "--out", str(out)]) == 0
    want = prompt_to_prompt(sd, PROMPTS[:2], guidance_scale=TOY_GUIDANCE_SCALE, steps=10, seed=0, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(panels(out, 2), pixels(want.images)))


@pytest.mark.parametrize("inversion, invert, steps", [
    ("negative-prompt", negative_prompt_inversion, 10),
    (None, null_text_inversion, 4),  # the default; its optimisation runs 10 Adam steps per step, so fewer steps
])
def test_cli_edits_a_real_image(inversion, invert, steps, sd, red_circle, tmp_path, capsys):
    out = tmp_path / "real.png"
    flags = ["--inversion", inversion] if inversion else []
    args = ["--weights", str(TOY), "--steps", str(steps), "--guidance", str(TOY_GUIDANCE_SCALE), "--quiet"]
    assert main([*args, "--prompts", *PROMPTS, "--image", str(red_circle), "--out", str(out), *flags]) == 0
    assert f"wrote {out} (4 panels, left to right: {['input image', *PROMPTS]})" in capsys.readouterr().out
    got = panels(out, 4)
    assert np.array_equal(got[0], np.asarray(Image.open(red_circle)))  # the input as it was read
    found = invert(sd, load_image(red_circle), PROMPTS[0], steps=steps, guidance_scale=TOY_GUIDANCE_SCALE,
                   progress=False)
    want = prompt_to_prompt(sd, PROMPTS, guidance_scale=TOY_GUIDANCE_SCALE, inversion=found, progress=False).images
    for k, (a, b) in enumerate(zip(got[1:], pixels(want))):  # the reconstruction, then the edits
        assert np.array_equal(a, b), f"panel {k + 1} differs from prompt_to_prompt's image {k}"


def test_cli_maps_are_the_stores_heatmaps(sd, tmp_path, capsys):
    out, maps = tmp_path / "edit.png", tmp_path / "maps.png"
    assert main([*COMMON, "--prompts", *PROMPTS, "--out", str(out), "--maps", str(maps)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f"wrote {maps} (cross-attention maps" in printed
    store = AttentionStore(len(PROMPTS), self_max_size=0)
    result = prompt_to_prompt(sd, PROMPTS, store=store, guidance_scale=TOY_GUIDANCE_SCALE, steps=10, seed=0,
                              progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(panels(out, 3), pixels(result.images)))
    want = stack_figures([token_heatmaps(store, sd.tokenizer, p, b, image=result.images[b])
                          for b, p in enumerate(PROMPTS)])
    assert np.array_equal(np.asarray(Image.open(maps).convert("RGB")), np.asarray(want))


# ---------------------------------------------------------------------------------- the pieces
def test_window_arguments():
    assert window("0.8") == 0.8 and window("0.2,0.8") == (0.2, 0.8)
    assert cross_window("0.3,0.6") == (0.3, 0.6)
    assert cross_window("default=0.8,circle=0.1:0.5") == {"default": 0.8, "circle": (0.1, 0.5)}


def test_captioned_grid_keeps_the_panels_and_wraps_the_captions():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)) for _ in range(3)]
    captions = ["a big red circle on a white background", "x", "a small yellow triangle at the top left"]
    grid = captioned_grid(images, captions)
    assert enlargement(SIDE) == 3 and grid.width == 3 * 192 + 4 * GAP  # 64 px panels shown at 192 px
    for shown, image in zip(grid_panels(np.asarray(grid), 3), images):
        assert np.array_equal(shown, np.asarray(image))  # enlarged by repetition only: every pixel kept
    band = np.asarray(grid)[GAP + 192:]
    middle = slice(GAP + 192 + GAP, 2 * (192 + GAP))
    assert (band < 128).any() and (band[:, middle] < 128).any()  # text drawn, under the short caption too
    from PIL import ImageFont

    font = ImageFont.load_default(size=9)
    lines = wrap(captions[0], font, SIDE - 4)
    assert " ".join(lines) == captions[0] and len(lines) > 1
    assert all(font.getlength(line) <= SIDE - 4 for line in lines)
    with pytest.raises(ValueError, match="one caption per image, got 3 images and 2 captions"):
        captioned_grid(images, captions[:2])


# ---------------------------------------------------------------------------------- bad input
LONG = " ".join(["a", "big", "red", "circle"] * 20)  # 80 words, one token each: over the 75 of a 77-token row


@pytest.mark.parametrize("bad, message", [
    (["--prompts", "a red circle"], "--prompts needs a source and at least one target prompt, got 1"),
    (["--prompts", "a red circle", "a big blue circle"], "need the same number of words"),
    (["--reweight", "red"], "argument --reweight: expected WORD=NUMBER, got 'red'"),
    (["--reweight", "red=much"], "argument --reweight: expected WORD=NUMBER, got 'red=much'"),
    (["--reweight", "green=2"], "word 'green' is not among the words"),
    (["--reweight", "red=2", "red=3"], "--reweight names ['red'] more than once"),
    (["--mode", "reweight"], "--mode reweight needs --reweight WORD=SCALE"),
    (["--blend", "square"], "blend word 'square' is in none of the prompts"),
    (["--blend-start", "0.5"], "--blend-start applies with --blend WORD ... only"),
    (["--blend-size", "0.5", "--blend-dilation", "0"], "--blend-size --blend-dilation apply with --blend WORD ... only"),
    (["--blend", "circle", "--blend-threshold", "1"], "argument --blend-threshold: expected a threshold in [0, 1), got 1"),
    (["--prompts", LONG, LONG], "has 80 tokens, but a 77-token row holds at most 75"),
    (["--prompts", "a red dog", "a blue dog"], "unknown word 'dog'"),
    (["--cross-steps", "0.9,0.1"], "argument --cross-steps: expected START <= END, got '0.9,0.1'"),
    (["--cross-steps", "1.5"], "argument --cross-steps: expected a fraction of the steps in [0, 1], got 1.5"),
    (["--cross-steps", "blue=0.2,blue=0.3"], "argument --cross-steps: expected WORD=F or WORD=START:END items"),
    (["--cross-steps", "default=0.8,square=0.4"], "names the word 'square', which is in none of the target prompts"),
    (["--self-steps", "0.1,0.2,0.3"], "argument --self-steps: expected a fraction F or a pair START,END"),
    (["--self-size", "0"], "argument --self-size: expected a fraction of the latent side in (0, 1], got 0"),
    (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
    (["--mode", "swap"], "argument --mode: invalid choice: 'swap'"),
    (["--out", "edit.xyz"], "cannot write .xyz; use e.g. .png or .jpg"),
    (["--maps", "maps.txt"], "--maps maps.txt: cannot write .txt"),
    (["--weights", "{tmp}/nowhere"], "/nowhere is not a folder"),
    (["--inversion", "null-text"], "--inversion applies to --image only"),
    (["--image", "{image}", "--seed", "1"], "--seed does not apply with --image"),
    (["--image", "{image}", "--guidance", "0.5"], "--guidance 0.5 < 1 cannot invert --image"),
    (["--image", "{tmp}/missing.png"], "--image: image file {tmp}/missing.png does not exist"),
    (["--image", "{text}"], "is not an image PIL can read"),
    (["--image", "{grey16}"], "--image: PIL mode 'I;16' (16/32-bit or float grey) is not read here"),
])
def test_cli_rejects_bad_arguments(bad, message, red_circle, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.zeros((SIDE, SIDE), dtype=np.uint16)).save(grey16)  # read as PIL mode I;16
    fill = dict(tmp=tmp_path, image=red_circle, text=text, grey16=grey16)
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exit_info:
        main([*COMMON, "--prompts", "a red circle", "a blue circle", "--out", str(out),
              *[b.format(**fill) for b in bad]])
    assert exit_info.value.code == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not out.exists()


def test_cli_reports_load_errors(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["--weights", str(tmp_path), "--prompts", "a", "b", "--out", str(out)]) == 2
    assert "has no model.json" in capsys.readouterr().err
    assert not out.exists()


def test_cli_checks_the_prompts_before_loading_the_networks(tmp_path, capsys):
    """A folder with the toy model's manifest and tokenizer but no network files: bad prompts are still
    reported as such (exit 2, usage), because they are checked before any network is read."""
    folder = tmp_path / "words_only"
    shutil.copytree(TOY / "tokenizer", folder / "tokenizer")
    shutil.copy(TOY / "model.json", folder / "model.json")
    args = ["--weights", str(folder), "--out", str(tmp_path / "x.png"), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--prompts", "a red circle", "a big blue circle"])
    assert exit_info.value.code == 2 and "need the same number of words" in capsys.readouterr().err
    assert main([*args, "--prompts", "a red circle", "a blue circle"]) == 2  # good prompts: now the networks are missing
    assert "error: " in capsys.readouterr().err
