"""Plug-and-Play's semantics on the shipped toy model (issue #7), judged by the analyzer.

20 rendered guidance images the model never saw (ToyDataset seed 31415; training used seed 1), each
translated to another colour with the short prompt "a <new colour> <shape>" (size, position and
background left to the method), 50 steps, guidance 5, negative prompt "": the first 20 images and
the "short" rows of ``benchmarks/pnp.py``, which prints these figures and more (ablations, full
prompts, the inversion-steps study, the time).

Asserted, with the measured values the bounds come from:

- the translation shows the target prompt's colour and shape in >= 80% of the images (the issue's
  goal; measured 95%);
- injection keeps the mask better than none: Plug-and-Play's mean IoU (0.723) exceeds plain
  sampling from the same z_T^G (zero injection, 0.689). The gain is where the inversion alone loses
  the object: on the benchmark's first 12 images injection lifts two from 0.04 and 0.31 to 0.75 and
  0.62 and moves none of the others by more than 0.04, so the mean difference is not a coin flip;
- SDEdit at strength 0.7, which makes the edit at least as often (100%), keeps the mask worse by
  more than 0.1 (0.532 against 0.723; the gap is the small objects, which SDEdit redraws at a size of
  its choosing: 0.29 against 0.68).

What does NOT hold on the toy model, and so is not asserted: the issue's mean mask IoU >= 0.8
(measured 0.723 here: big objects 0.77, small 0.68; 0.78 with the full caption as target prompt).
A small object (half extent 8 px, one latent pixel) loses ~0.2 IoU to a boundary moved by one pixel
((8 / 9)^2 = 0.79 for a square), a big one (14 px) ~0.13, and the toy model does not keep the mask
better than that even when nothing is asked to change: the round trip (source caption, full
injection) keeps 0.80 on the benchmark's 20 images at guidance 5, 0.83 at 3 and 0.89 at 1 (plain
DDIM reconstruction 0.93): it is the guidance that moves the boundary. Nor does "SDEdit at
comparable success keeps the mask worse" hold at low strengths: at 0.2-0.3 SDEdit makes the edit in
80-85% of the images and keeps the mask better than Plug-and-Play (0.78-0.79; the toy's colour is a
low-frequency attribute that a few steps repaint). Both are in the closing note of #7 and in
notebook 08, section 6.

Run time: ~55 s of CPU with OMP_NUM_THREADS=1 (inversion, translation, zero injection and
SDEdit of 20 images).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editing.plug_and_play import invert_guidance_image, plug_and_play, sdedit
from ldm.pipeline import StableDiffusion
from toyworld.analyze import analyze_batch, mask_iou, matches
from toyworld.edit_eval import LAYOUT_FREE, swapped
from toyworld.model import TOY_GUIDANCE_SCALE
from toyworld.render import ToyDataset
from toyworld.world import caption, parse_caption

IMAGES, UNSEEN_SEED, STEPS = 20, 31415, 50
SDEDIT_STRENGTH = 0.7
MARGIN = 0.1  # half the measured gap (0.19); see the docstring


@pytest.fixture(scope="module")
def results() -> dict:
    """Per method: whether each translation shows the target prompt, and its mask IoU with the input."""
    sd = StableDiffusion.from_folder("weights/toy")
    data, rng = ToyDataset(UNSEEN_SEED), np.random.default_rng(UNSEEN_SEED)
    inputs, prompts, big, latents = [], [], [], {"pnp": [], "zero": [], "sdedit": []}
    for k in range(IMAGES):
        x, _, scene = data[k]
        x = x[None]  # (1, 3, 64, 64) in [0, 1]
        prompt = caption(swapped(scene, "colour", rng), LAYOUT_FREE)  # "a <new colour> <shape>"
        inputs.append(x)
        prompts.append(prompt)
        big.append(scene.size == "big")
        inv = invert_guidance_image(sd, x, steps=STEPS, progress=False)
        common = dict(negative_prompt="", guidance_scale=TOY_GUIDANCE_SCALE, progress=False)
        latents["pnp"].append(plug_and_play(sd, inv, prompt, **common))
        latents["zero"].append(plug_and_play(sd, inv, prompt, feature_injection=0.0, attention_injection=0.0, **common))
        latents["sdedit"].append(sdedit(sd, inv.z0, prompt, strength=SDEDIT_STRENGTH, steps=STEPS, seed=0, **common))
    sources = analyze_batch(torch.cat(inputs))
    out = {"big": np.array(big)}
    for method, zs in latents.items():
        analyses = analyze_batch(torch.cat([sd.decode(z) for z in zs]))  # decode: (n, 3, 64, 64) in [0, 1]
        out[method] = {
            "success": np.array([a.found and all(matches(a, parse_caption(p)).values())
                                 for a, p in zip(analyses, prompts)]),
            "iou": np.array([mask_iou(a.mask, s.mask) for a, s in zip(analyses, sources)]),
        }
        print(f"{method}: success {out[method]['success'].mean():.0%}, mask IoU {out[method]['iou'].mean():.3f} "
              f"(big {out[method]['iou'][out['big']].mean():.3f}, small {out[method]['iou'][~out['big']].mean():.3f})")
    return out


def test_translation_shows_the_target_prompt(results):
    assert results["pnp"]["success"].mean() >= 0.8, results["pnp"]["success"]


def test_injection_keeps_the_mask_better_than_sampling_from_the_inversion_alone(results):
    assert results["pnp"]["iou"].mean() > results["zero"]["iou"].mean(), (results["pnp"]["iou"], results["zero"]["iou"])


def test_sdedit_making_the_edit_as_often_keeps_the_mask_worse(results):
    assert results["sdedit"]["success"].mean() >= results["pnp"]["success"].mean()
    assert results["sdedit"]["iou"].mean() < results["pnp"]["iou"].mean() - MARGIN, (results["sdedit"]["iou"],
                                                                                    results["pnp"]["iou"])
