"""python -m ldm.cli.pnp: the written images are the library's results, and bad input exits with status 2.

Everything runs the shipped toy model (weights/toy) with 10 steps, guidance 5 and the negative
prompt "" (the toy vocabulary has no English words), so each command takes about a second on one
CPU thread. The images are compared with ``invert_guidance_image`` / ``plug_and_play`` / ``sdedit``
called with the same arguments in this process: the same computation, so after the same rounding
to 8 bits (``to_pil``) the pixels must be equal, not merely close.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.cli.common import captioned_grid
from editing.plug_and_play import DEFAULT_NEGATIVE, invert_guidance_image, plug_and_play, sdedit
from ldm.cli.pnp import DEFAULT_STRENGTHS, main
from ldm.images import load_image, to_pil
from ldm.pipeline import StableDiffusion
from ldm.figure_style import GAP
from toyworld.model import TOY_GUIDANCE_SCALE
from toyworld.render import render
from toyworld.world import Scene

TOY = Path(__file__).resolve().parents[1] / "weights" / "toy"
SIDE = 64  # the toy model's images are 64 x 64
STEPS = 10
PROMPT = "a big blue circle"
COMMON = ["--weights", str(TOY), "--steps", str(STEPS), "--guidance", str(TOY_GUIDANCE_SCALE), "--negative", "",
          "--quiet"]


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    torch.manual_seed(0)
    return StableDiffusion.from_folder(TOY)


@pytest.fixture
def red_circle(tmp_path) -> Path:
    """A toy-world image, as an 8-bit PNG."""
    path = tmp_path / "red_circle.png"
    rgb = render(Scene("circle", "red", "big", "center", "white", dx=1.5, dy=-1.0))  # (64, 64, 3) in [0, 1]
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    return path


def pixels(latents: torch.Tensor, sd: StableDiffusion) -> np.ndarray:
    """z_0 (1, 4, 8, 8) -> the uint8 image the CLI writes."""
    return np.asarray(to_pil(sd.decode(latents))[0])


def translate(sd, path, steps=STEPS, inversion_steps=None, **kwargs) -> tuple[np.ndarray, torch.Tensor]:
    """The library's translation of ``path``, read as the CLI reads it; also z_0^G."""
    image = load_image(path, SIDE, SIDE, multiple=sd.size_multiple)
    inv = invert_guidance_image(sd, image, steps=steps, inversion_steps=inversion_steps, progress=False)
    z = plug_and_play(sd, inv, PROMPT, negative_prompt="", guidance_scale=TOY_GUIDANCE_SCALE, progress=False, **kwargs)
    return pixels(z, sd), inv.z0


# ---------------------------------------------------------------------------------- what is written
def test_cli_writes_the_librarys_translation(sd, red_circle, tmp_path, capsys):
    out = tmp_path / "out" / "blue.png"
    assert main([*COMMON, "--image", str(red_circle), "--prompt", PROMPT, "--out", str(out)]) == 0
    assert f"wrote {out} (Plug-and-Play translation of {red_circle} to {PROMPT!r})" in capsys.readouterr().out
    want, _ = translate(sd, red_circle)
    assert np.array_equal(np.asarray(Image.open(out)), want)
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


def test_cli_flags_reach_the_library(sd, red_circle, tmp_path):
    out = tmp_path / "flags.png"
    flags = ["--feature-injection", "0.3", "--attention-injection", "0.9", "--inversion-steps", "20"]
    assert main([*COMMON, "--image", str(red_circle), "--prompt", PROMPT, "--out", str(out), *flags]) == 0
    want, _ = translate(sd, red_circle, inversion_steps=20, feature_injection=0.3, attention_injection=0.9)
    assert np.array_equal(np.asarray(Image.open(out)), want)
    default, _ = translate(sd, red_circle)
    assert not np.array_equal(want, default)  # the flags matter: with the defaults it comes out differently


def test_cli_figure_is_input_pnp_and_sdedit(sd, red_circle, tmp_path, capsys):
    out, figure = tmp_path / "t.png", tmp_path / "side.png"
    assert main([*COMMON, "--image", str(red_circle), "--prompt", PROMPT, "--out", str(out), "--figure", str(figure),
                 "--strengths", "0.3", "0.6", "--seed", "4"]) == 0
    captions = ["input image", f"Plug-and-Play: {PROMPT}", "SDEdit 0.3", "SDEdit 0.6"]
    assert f"wrote {figure} (4 panels, left to right: {captions})" in capsys.readouterr().out
    translated, z0 = translate(sd, red_circle)
    panels = [np.asarray(Image.open(red_circle)), translated]
    panels += [pixels(sdedit(sd, z0, PROMPT, strength=s, steps=STEPS, guidance_scale=TOY_GUIDANCE_SCALE,
                             negative_prompt="", seed=4, progress=False), sd) for s in (0.3, 0.6)]
    want = captioned_grid([Image.fromarray(p) for p in panels], captions)
    assert np.array_equal(np.asarray(Image.open(figure).convert("RGB")), np.asarray(want))
    assert np.array_equal(np.asarray(Image.open(out)), translated)


def test_cli_figure_default_strengths(red_circle, tmp_path, capsys):
    figure = tmp_path / "side.png"
    assert main([*COMMON, "--image", str(red_circle), "--prompt", PROMPT, "--out", str(tmp_path / "t.png"),
                 "--figure", str(figure)]) == 0
    assert f"{[f'SDEdit {s:g}' for s in DEFAULT_STRENGTHS]}"[1:-1] in capsys.readouterr().out
    n = 2 + len(DEFAULT_STRENGTHS)  # panels of 64 px shown at 192 px, GAP px apart
    assert Image.open(figure).width == n * 192 + (n + 1) * GAP


def test_cli_grey_rgba_and_odd_sized_images(sd, tmp_path):
    """Grey is replicated to RGB, RGBA composited onto white, and a 100x80 image centre-cropped to a
    square and resized to the model's 64x64, with a warning naming both sizes."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(tmp_path / "grey_rgb.png")
    rgba = rng.integers(0, 256, (80, 100, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for name in ("grey", "grey_rgb"):
        assert main([*COMMON, "--image", str(tmp_path / f"{name}.png"), "--prompt", PROMPT,
                     "--out", str(tmp_path / f"{name}_out.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grey_out.png")),
                          np.asarray(Image.open(tmp_path / "grey_rgb_out.png")))
    with pytest.warns(UserWarning, match=r"is 100x80 \(width x height\); centre-cropped to the aspect ratio and "
                                         r"resized to 64x64"):
        assert main([*COMMON, "--image", str(tmp_path / "rgba.png"), "--prompt", PROMPT,
                     "--out", str(tmp_path / "rgba_out.png")]) == 0
    assert Image.open(tmp_path / "rgba_out.png").size == (SIDE, SIDE)
    with pytest.warns(UserWarning):
        want, _ = translate(sd, tmp_path / "rgba.png")  # the same crop, resize and composite
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rgba_out.png")), want)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, message", [
    (dict(image="notes.png"), r"--image: .*notes.png is not an image PIL can read"),
    (dict(image="missing.png"), r"--image: image file .*missing.png does not exist"),
    (dict(prompt=""), r"--prompt must describe the translation, got ''"),
    (dict(prompt="a big blue elephant"), r"--prompt: unknown word 'elephant' in prompt 'a big blue elephant'"),
    (dict(negative=None), r'--negative: unknown word .* pass --negative ""'),
    (dict(flags=["--feature-injection", "1.5"]), r"--feature-injection: .*fraction of the steps in \[0, 1\], got 1.5"),
    (dict(flags=["--attention-injection", "-0.1"]), r"--attention-injection: .*in \[0, 1\], got -0.1"),
    (dict(flags=["--inversion-steps", "30"]), r"--inversion-steps 30 misses the sampling timesteps \[101, 201"),
    (dict(flags=["--inversion-steps", "1001"]), r"num_inference_steps=1001 is more than num_train_timesteps=1000"),
    (dict(flags=["--steps", "0"]), r"--steps: expected a positive integer, got 0"),
    (dict(out="t.xyz"), r"--out .*t.xyz: cannot write .xyz"),
    (dict(flags=["--figure", "f.png", "--strengths", "0.05"]), r"--strengths \[0.05\] leave SDEdit no step to run"),
    (dict(flags=["--figure", "f.png", "--strengths", "0"]), r"--strengths: expected an SDEdit strength in \(0, 1\]"),
    (dict(flags=["--strengths", "0.5"]), r"--strengths applies to --figure only"),
    (dict(weights="nowhere"), r"--weights .*nowhere is not a folder"),
])
def test_cli_rejects_bad_arguments(change, message, red_circle, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    image = tmp_path / change["image"] if "image" in change else red_circle
    weights = tmp_path / change["weights"] if "weights" in change else TOY
    negative = [] if change.get("negative", "") is None else ["--negative", ""]
    argv = ["--weights", str(weights), "--steps", str(STEPS), *negative, "--quiet", "--image", str(image),
            "--prompt", change.get("prompt", PROMPT), "--out", str(tmp_path / change.get("out", "t.png")),
            *change.get("flags", [])]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "f.png").exists()


def test_cli_default_negative_is_the_official_one():
    """The default is the official translation's; only the toy's word vocabulary needs --negative ""."""
    from ldm.cli.pnp import build_parser

    args = build_parser().parse_args(["--weights", "w", "--image", "i.png", "--prompt", "p"])
    assert args.negative == DEFAULT_NEGATIVE == "ugly, blurry, black, low res, unrealistic"
    assert (args.feature_injection, args.attention_injection, args.steps, args.guidance) == (0.8, 0.5, 50, 7.5)


def test_cli_reports_a_folder_that_is_no_model(red_circle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--weights", str(tmp_path / "empty"), "--image", str(red_circle), "--prompt", PROMPT,
                 "--out", str(tmp_path / "t.png")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "t.png").exists()
