"""ldm/images.py: every accepted input becomes (1, 3, H, W) RGB in [0, 1] at a multiple of 8, says
so when it changes the size, and refuses what it cannot read with the path or the value named."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.images import image_grid, load_image, to_pil


@contextlib.contextmanager
def no_warning():
    """A context in which any warning is an error: the size was already right, nothing to say."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def rgb_pixels(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_file_round_trips_bit_for_bit(tmp_path):
    """uint8 -> /255 -> x255 and round: to_pil(load_image(png)) gives back the file's pixels."""
    pixels = rgb_pixels()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    with no_warning():
        x = load_image(tmp_path / "a.png")  # a Path
        y = load_image(str(tmp_path / "a.png"))  # a str
    assert x.shape == (1, 3, 48, 64) and x.dtype == torch.float32 and torch.equal(x, y)
    assert np.array_equal(np.asarray(to_pil(x)[0]), pixels)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "RGB"])
def test_pil_modes_become_rgb(mode):
    """PIL's own conversion to RGB, then /255: grey modes give three equal channels."""
    image = Image.fromarray(rgb_pixels()).convert(mode)
    x = load_image(image)
    want = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    assert x.shape == (1, 3, 48, 64)
    torch.testing.assert_close(x[0].permute(1, 2, 0), torch.from_numpy(want), rtol=0, atol=0)
    if mode in ("L", "1"):
        assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])


def test_alpha_is_composited_on_white():
    """rgb = alpha * rgb + (1 - alpha): transparent -> white, opaque -> unchanged, half -> halfway."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[0, :, 3] = 0  # row 0 transparent
    rgba[1, :, 3] = 255  # row 1 opaque
    rgba[2:, :, 3] = 128
    expected = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1 - 128 / 255, 1 - 128 / 255]])  # rows 0, 1, 2
    for image in (rgba, Image.fromarray(rgba, "RGBA"), rgba.astype(np.float32) / 255):
        x = load_image(image)
        torch.testing.assert_close(x[0, :, :3, 0].T, expected, rtol=0, atol=1e-6)  # float32 rounding of /255
    la = Image.fromarray(rgba, "RGBA").convert("LA")
    assert load_image(la)[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # transparent grey -> white too
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))  # the red: every pixel transparent
    assert torch.equal(load_image(palette), torch.ones(1, 3, 8, 8))


@pytest.mark.parametrize("shape", [(48, 64), (48, 64, 3), (48, 64, 4)])
def test_numpy_uint8_and_float_agree(shape):
    pixels = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    x, y = load_image(pixels), load_image(pixels.astype(np.float64) / 255)
    assert x.shape == (1, 3, 48, 64)
    torch.testing.assert_close(x, y, rtol=0, atol=1e-6)  # float32 rounding of k / 255 two ways


def test_tensors_in_zero_one():
    x = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_image(x), x[None]) and torch.equal(load_image(x[None]), x[None])


def test_odd_size_is_cropped_to_a_multiple_with_a_warning():
    """65 x 50 (width x height) -> the centred 64 x 48 window, and a warning with both sizes."""
    pixels = rgb_pixels(50, 65)
    with pytest.warns(UserWarning, match=r"is 65x50 \(width x height\); centre-cropped to 64x48"):
        x = load_image(pixels)
    assert x.shape == (1, 3, 48, 64)
    assert torch.equal(x, load_image(pixels[1:49, 0:64]))  # top = (50 - 48) // 2, left = (65 - 64) // 2
    with pytest.warns(UserWarning, match="65x50"):
        assert load_image(pixels, multiple=32).shape == (1, 3, 32, 64)


def test_requested_size_crops_to_the_aspect_ratio_then_resizes():
    """A 100 x 50 image asked for at 32 x 32: the central 50 x 50 square, resized. Two halves of
    different colours left and right of the square's centre line stay left and right."""
    pixels = np.zeros((50, 100, 3), dtype=np.uint8)
    pixels[:, :50] = (255, 0, 0)
    pixels[:, 50:] = (0, 0, 255)
    with pytest.warns(UserWarning, match=r"100x50 .*resized to 32x32"):
        x = load_image(pixels, height=32, width=32)
    assert x.shape == (1, 3, 32, 32)
    assert x[0, 0, :, :15].min() > 0.99 and x[0, 2, :, 17:].min() > 0.99  # red left, blue right
    flat = np.full((50, 100, 3), 77, dtype=np.uint8)
    with pytest.warns(UserWarning):
        torch.testing.assert_close(load_image(flat, 64, 64), torch.full((1, 3, 64, 64), 77 / 255), rtol=0, atol=1e-6)
    with no_warning():
        assert load_image(rgb_pixels(), 48, 64).shape == (1, 3, 48, 64)  # already that size: untouched


def test_bad_input(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes.png is not an image PIL can read"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match=r"image file .*missing.png does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        load_image(tmp_path)
    with pytest.raises(ValueError, match=r"must hold values in \[0, 1\], got \[-1, 1\]; map \[-1, 1\] images with \(x \+ 1\) / 2"):
        load_image(torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8))
    with pytest.raises(ValueError, match=r"float \(3, H, W\) or \(1, 3, H, W\), got torch.float32 \(2, 3, 8, 8\)"):
        load_image(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"float array with values in \[0, 2\]"):
        load_image(np.linspace(0, 2, 8 * 8 * 3).reshape(8, 8, 3))
    with pytest.raises(ValueError, match="dtype uint16; expected uint8"):
        load_image(np.zeros((8, 8, 3), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 2\); expected \(H, W\) grey"):
        load_image(np.zeros((8, 8, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="PIL mode 'I;16'"):
        load_image(Image.new("I;16", (8, 8)))
    with pytest.raises(ValueError, match="cannot read an image from a list"):
        load_image([[0, 1]])
    with pytest.raises(ValueError, match="is 5x4 .*at least 8 pixels"):
        load_image(np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="give both height and width"):
        load_image(rgb_pixels(), height=32)
    with pytest.raises(ValueError, match="width must be a positive multiple of 8, got 36"):
        load_image(rgb_pixels(), height=32, width=36)
    with pytest.raises(ValueError, match=r"expected a \(B, 3, H, W\) image tensor, got \(3, 8, 8\)"):
        to_pil(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"images of one size, got \[\(8, 8\), \(16, 8\)\]"):
        image_grid([Image.new("RGB", (8, 8)), Image.new("RGB", (16, 8))])


def test_grid_places_images_row_by_row():
    tiles = [Image.new("RGB", (8, 4), c) for c in ("red", "green", "blue")]
    grid = image_grid(tiles)
    assert grid.size == (24, 4) and grid.getpixel((12, 2)) == (0, 128, 0)
    grid = image_grid(tiles, columns=2)
    assert grid.size == (16, 8) and grid.getpixel((2, 6)) == (0, 0, 255) and grid.getpixel((12, 6)) == (255, 255, 255)
