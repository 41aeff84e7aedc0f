"""The outputs of every sampling entry point and CLI on fixed seeds, as digests.

A refactor of the sampling loop or of the editing layer must not change a single bit of what the
library computes. This module runs each entry point (text-to-image with DDIM, DDPM and eta > 0;
Prompt-to-Prompt word swap, refinement, re-weighting and local blending; null-text, negative-prompt
and plain DDIM inversion, each with an edit; Plug-and-Play; SDEdit; the three CLIs) on the shipped
toy model and on a random tiny Stable Diffusion, and reduces every output tensor to

- ``sha256``: the digest of its bytes, shape and dtype: equal only if every bit is;
- ``fingerprint``: its mean, its standard deviation and four fixed random projections (float64).

``tests/test_bit_for_bit.py`` compares a fresh run with ``tests/bit_for_bit.json``. Bits are
compared where the platform (torch version, CPU instruction set, processor) is the one the record was made on;
elsewhere the kernels round differently, and the fingerprints are compared within the tolerance
written in the test. To record anew, after a change that is meant to change outputs (new weights),
run ``python -m tests.bit_for_bit --write`` and say why in the commit.

Everything runs on one thread: the kernels' reduction order, and so the rounding, depends on it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECORD = Path(__file__).with_name("bit_for_bit.json")
TOY = ROOT / "weights" / "toy"
STEPS = 8  # enough steps for every window (cross 0.8, self 0.4, blending from 0.2, PnP 0.8 / 0.5) to open and close
WORDS = ["a", "big", "small", "red", "blue", "green", "circle", "square", "on", "background"]


# Elsewhere than the recording platform the kernels round differently. Measured: switching every
# convolution from oneDNN to PyTorch's own kernel (torch.backends.mkldnn.enabled = False) moves
# the fingerprints by at most 1.8e-4 of the output's standard deviation (null-text's edit on the
# random model, where 8 optimised steps amplify the rounding); a record made on an AVX512 machine
# against a run on an AVX2 one (an AMD EPYC): at most 2.3e-4. 10x the first is the bound.
FINGERPRINT_TOLERANCE = 2e-3


def cpu_model() -> str:
    """The processor's name, recorded with the instruction set: bits are compared only on the
    processor the record was made on, since oneDNN chooses its kernels by processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform as host

    return host.processor() or host.machine()


def platform() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "processor": cpu_model()}


def summarize(x: torch.Tensor) -> dict:
    x = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(x.shape)} {x.dtype}".encode() + x.numpy().tobytes()).hexdigest()
    flat = x.double().flatten()
    directions = torch.randn(4, flat.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projections = (directions @ flat) / flat.numel() ** 0.5
    return {"sha256": digest, "shape": list(x.shape),
            "fingerprint": [flat.mean().item(), flat.std().item() if flat.numel() > 1 else 0.0, *projections.tolist()]}


def png_pixels(path: Path) -> torch.Tensor:
    """The decoded pixels of an image file (its bytes depend on the zlib build; its pixels do not)."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_random_sd():
    """The tiny test configs with a 2-level U-Net (attention at both levels), every parameter moved
    off its initial value by a seeded draw, and a word tokenizer: a model no training changes."""
    from ddpm.schedule import NoiseSchedule
    from ldm.clip_config import CLIPTextConfig
    from ldm.clip_text import CLIPTextModel
    from ldm.pipeline import StableDiffusion
    from ldm.tokenizer import WordTokenizer
    from ldm.vae import AutoencoderKL
    from ldm.vae_config import VAEConfig
    from unet.config import UNetConfig
    from unet.model import UNet

    tokenizer = WordTokenizer(WORDS)
    text = dataclasses.replace(CLIPTextConfig.tiny(), vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                               bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    unet = dataclasses.replace(UNetConfig.tiny(), block_out_channels=(32, 64), layers_per_block=1,
                               attention_levels=(True, True))
    torch.manual_seed(7)
    parts = UNet(unet), AutoencoderKL(VAEConfig.tiny()), CLIPTextModel(text)
    with torch.no_grad():
        for model in parts:
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return StableDiffusion(*parts, tokenizer, NoiseSchedule.from_name("scaled_linear"), image_size=64)


def python_entry_points(sd, name: str, guidance: float, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every Python entry point that samples, on one model; ``image`` (1, 3, H, W) in [0, 1] is the real image."""
    from editing.attention_store import AttentionStore
    from editing.null_text import ddim_inversion, negative_prompt_inversion, null_text_inversion
    from editing.plug_and_play import invert_guidance_image, plug_and_play, sdedit
    from editing.prompt_to_prompt import Injection, LocalBlend, Refinement, Reweight, WordSwap, prompt_to_prompt

    src, tgt = "a big red circle on a blue background", "a big green square on a blue background"
    out: dict[str, torch.Tensor] = {}
    g = dict(guidance_scale=guidance, steps=STEPS, progress=False)

    r = sd.text_to_image([src, "a small green square"], seed=0, **g)
    out[f"{name}/text_to_image/ddim"] = r.images
    out[f"{name}/text_to_image/ddim/latents"] = r.latents
    out[f"{name}/text_to_image/ddpm"] = sd.text_to_image([src], seed=1, sampler="ddpm", **g).images
    out[f"{name}/text_to_image/eta"] = sd.text_to_image([src], seed=2, eta=0.5, **g).images
    out[f"{name}/text_to_image/guidance1"] = sd.text_to_image([src], seed=3, guidance_scale=1.0, steps=STEPS,
                                                              progress=False).images
    out[f"{name}/text_to_image/negative"] = sd.text_to_image([src], seed=4, negative_prompt="a small square", **g).images

    store = AttentionStore(2)
    r = prompt_to_prompt(sd, [src, tgt], seed=0, store=store, **g)
    out[f"{name}/p2p/replace"] = r.images
    out[f"{name}/p2p/replace/cross_maps"] = store.aggregate("cross")
    out[f"{name}/p2p/replace/self_maps"] = store.aggregate("self")
    r = prompt_to_prompt(sd, ["a red circle on a blue background", "a big red circle on a blue background"],
                         Refinement(), seed=1, **g)
    out[f"{name}/p2p/refine"] = r.images
    r = prompt_to_prompt(sd, [src, src], Reweight({"red": 3.0}), seed=2, **g)
    out[f"{name}/p2p/reweight"] = r.images
    r = prompt_to_prompt(sd, [src, tgt], Reweight({"green": 2.0}, on=WordSwap()),
                         injection=Injection(cross_replace_steps={"default": 0.8, "square": 0.4},
                                             self_replace_steps=(0.1, 0.6)), seed=3, **g)
    out[f"{name}/p2p/replace_reweight_windows"] = r.images
    r = prompt_to_prompt(sd, [src, tgt], blend=LocalBlend(["circle", "square"]), seed=4, **g)
    out[f"{name}/p2p/blend"] = r.images
    r = prompt_to_prompt(sd, [src, tgt], blend=LocalBlend(["circle"], size=1.0, threshold=0.2), seed=5, **g)
    out[f"{name}/p2p/blend_fine"] = r.images

    trajectory = sd.invert(sd.encode_image(image), sd.encode_prompts([src]), steps=STEPS, progress=False)
    out[f"{name}/invert"] = torch.stack(list(trajectory))
    for method, invert in (("null_text", null_text_inversion), ("negative_prompt", negative_prompt_inversion),
                           ("ddim", ddim_inversion)):
        inversion = invert(sd, image, src, **g)
        out[f"{name}/{method}/z_T"] = inversion.latents[-1]
        out[f"{name}/{method}/uncond"] = torch.stack(inversion.uncond_per_step)
        out[f"{name}/{method}/reconstruction"] = inversion.reconstruct(sd, progress=False)
        out[f"{name}/{method}/edit"] = prompt_to_prompt(sd, [src, tgt], inversion=inversion, progress=False).images

    inversion = invert_guidance_image(sd, image, steps=STEPS, progress=False)
    out[f"{name}/pnp/inversion"] = torch.stack(list(inversion.latents))
    out[f"{name}/pnp/translation"] = plug_and_play(sd, inversion, tgt, guidance_scale=guidance,
                                                   negative_prompt="a small square", progress=False)
    out[f"{name}/pnp/no_guidance"] = plug_and_play(sd, inversion, tgt, guidance_scale=1.0, progress=False)
    out[f"{name}/pnp/windows"] = plug_and_play(sd, inversion, tgt, guidance_scale=guidance, feature_injection=0.5,
                                               attention_injection=0.25, negative_prompt="", progress=False)
    out[f"{name}/sdedit"] = sdedit(sd, image, tgt, strength=0.6, seed=0, **g)
    return out


def cli_outputs(folder: Path) -> dict[str, torch.Tensor]:
    """The three CLIs on the shipped toy model: the pixels of every file they write."""
    from ldm.cli import generate, p2p, pnp

    out: dict[str, torch.Tensor] = {}
    src, tgt = "a big red circle on a blue background", "a big green square on a blue background"
    common = ["--weights", str(TOY), "--steps", str(STEPS), "--guidance", "5", "--quiet"]
    runs: dict[str, tuple[Callable, list[str], list[str]]] = {
        "generate": (generate.main, ["--prompt", src, "--prompt", tgt, "--seed", "3"], ["generate.png"]),
        "p2p": (p2p.main, ["--prompts", src, tgt, "--seed", "1", "--maps", str(folder / "p2p_maps.png"),
                           "--blend", "circle", "square"], ["p2p.png", "p2p_maps.png"]),
        "p2p_image": (p2p.main, ["--prompts", src, tgt, "--image", str(folder / "input.png")], ["p2p_image.png"]),
        "pnp": (pnp.main, ["--image", str(folder / "input.png"), "--prompt", tgt, "--negative", "", "--figure",
                           str(folder / "pnp_figure.png"), "--strengths", "0.5", "0.8"], ["pnp.png", "pnp_figure.png"]),
    }
    for name, (main, args, files) in runs.items():
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(common + args + ["--out", str(folder / files[0])])
        if code != 0:
            raise RuntimeError(f"{name} exited with {code}")
        for file in files:
            out[f"cli/{name}/{file}"] = png_pixels(folder / file)
    return out


def record() -> dict[str, dict]:
    """Run everything (about a minute on one thread) and summarize each output."""
    from ldm.images import to_pil
    from ldm.pipeline import StableDiffusion
    from toyworld.render import ToyDataset

    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = ToyDataset(seed=271828)[3][0][None]  # (1, 3, 64, 64) in [0, 1]: an image neither model saw
        to_pil(image)[0].save(folder / "input.png")
        image = png_pixels(folder / "input.png").permute(2, 0, 1)[None].float() / 255  # what the CLIs read
        outputs = python_entry_points(StableDiffusion.from_folder(TOY), "toy", 5.0, image)
        outputs |= python_entry_points(tiny_random_sd(), "random", 7.5, image)
        outputs |= cli_outputs(folder)
    return {name: summarize(x) for name, x in outputs.items()}


def compare(recorded: dict, outputs: dict) -> tuple[str, list[str]]:
    """How ``outputs`` were compared with the record (bit for bit on its platform, else by fingerprint
    within FINGERPRINT_TOLERANCE of each output's std) and the names of those that changed."""
    same_platform = recorded["platform"] == platform()
    changed = []
    for name, want in recorded["outputs"].items():
        got = outputs.get(name)
        if got is None or got["shape"] != want["shape"]:
            changed.append(f"{name} (missing or of another shape)")
        elif same_platform:
            if got["sha256"] != want["sha256"]:
                changed.append(name)
        else:
            scale = max(abs(want["fingerprint"][1]), 1e-12)
            error = max(abs(a - b) for a, b in zip(got["fingerprint"], want["fingerprint"])) / scale
            if error > FINGERPRINT_TOLERANCE:
                changed.append(f"{name} ({error:.2g} of its std)")
    where = ("bit for bit" if same_platform else
             f"within {FINGERPRINT_TOLERANCE} of the std: recorded on {recorded['platform']}, run on {platform()}")
    return where, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record anew into {RECORD.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    outputs = record()
    if args.write:
        RECORD.write_text(json.dumps({"platform": platform(), "outputs": outputs}, indent=1) + "\n")
        print(f"wrote {len(outputs)} digests to {RECORD}")
        return 0
    recorded = json.loads(RECORD.read_text())
    where, changed = compare(recorded, outputs)
    print(f"{len(recorded['outputs']) - len(changed)} of {len(recorded['outputs'])} outputs unchanged ({where}); "
          f"changed: {changed}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
