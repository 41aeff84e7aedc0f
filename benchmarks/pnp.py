"""Plug-and-Play (issue #7): its price against plain sampling, how many inversion steps it needs, and
what it keeps, on the toy model against SDEdit and its own ablations.

Toy model (weights/toy, 8x8 latents, 50 sampling steps, guidance ``--guidance`` = 5, negative prompt
"": the toy vocabulary has no English words). ``--images`` rendered scenes the model never trained
on (ToyDataset seed ``--seed``; training used seed 1); each gets a colour swap, the new colour drawn
among those that differ from the old one and from the background. Two target prompts per scene:

    short   "a <new colour> <shape>"                   (size, position, background left to the method)
    full    the scene's full caption with the new colour (every attribute named)

and the analyzer (toyworld/analyze.py) scores each translation against the rendered input:

    success    the translation shows every attribute its target prompt names
    colour     the translation shows the new colour
    mask IoU   |M_in and M_out| / |M_in or M_out| of the analyzer's object masks (issue goal: >= 0.8)

1. Inversion-steps study. For each of ``--inversion-steps`` (default 50, 200, 999; the official code
   inverts with 999) the guidance image is inverted once (VAE posterior mean, DDIM inversion with "",
   s = 1) and used for: plain DDIM reconstruction (50-step DDIM from z_T^G with "" at s = 1), the
   Plug-and-Play round trip (target = the source caption, full injection 1.0 / 1.0, s = 5), and the
   default translation (0.8 / 0.5) with both prompts. PSNR is dB on [0, 1] against the render; the
   VAE alone, D(E(x)), is the ceiling of any latent method.
2. Methods, at the library's default inversion steps: Plug-and-Play (0.8 / 0.5), without features
   (0 / 0.5), without attention (0.8 / 0), zero injection (0 / 0: plain image-to-image from z_T^G),
   and SDEdit at ``--strengths`` (seed 0), as the paper's ablation table; variants: the features of
   every decoder ResBlock injected (the toy has four; 0.8 / 0.5, and 1.0 / 1.0, which shows what the
   paper avoids by injecting one layer: the finer layers carry the source's appearance too), and
   Plug-and-Play at ``--low-guidance`` (3).
   Ceilings with the source caption (nothing asked to change): plain DDIM reconstruction (s = 1)
   and the Plug-and-Play round trip (1.0 / 1.0) at guidance 5, ``--low-guidance`` and 1. IoU is
   split by the input's object size: a small object (half extent 8 px, one latent pixel) loses ~0.2
   IoU to a boundary moved by one pixel ((8 / 9)^2 = 0.79 for a square), a big one (14 px) ~0.13.
3. Time, per image: inversion, translation, and both (prompt to pixels, decode included) against
   plain text-to-image sampling of the target prompt in the same run (the ratio is the price).

SD v1.5 configuration with random weights (860M-parameter U-Net, CLIP-L text encoder, fp32 CPU) at
a 4x32x32 latent: only ``--sd-steps`` (3) steps, as a step costs seconds here. The windows are
fractions of the steps, so 3 steps have one step with features and q, k injected (batch 3), one
with features alone (batch 3) and one without (batch 2, no source branch), where 50 steps have
25 : 15 : 10; the 50-step estimate weights each kind of step's measured time by its count.
Random weights: only time is shown. ``--no-sd`` skips it.

    .venv/bin/python benchmarks/pnp.py --threads 1           (20 images: ~25 minutes on a busy 2-core machine)
    .venv/bin/python benchmarks/pnp.py --quick --threads 1   (4 images, smoke run; SD included)
"""
from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from editing.plug_and_play import (PlugAndPlay, injection_sites, invert_guidance_image, plug_and_play,  # noqa: E402
                                   sdedit)
from ldm.pipeline import StableDiffusion  # noqa: E402
from toyworld.analyze import analyze_batch, mask_iou, matches  # noqa: E402
from toyworld.edit_eval import LAYOUT_FREE, swapped  # noqa: E402
from toyworld.evaluate import psnr_db  # noqa: E402
from toyworld.model import TOY_GUIDANCE_SCALE  # noqa: E402
from toyworld.render import ToyDataset  # noqa: E402
from toyworld.world import caption, parse_caption  # noqa: E402
from _unseen import add_unseen_image_args, apply_unseen_image_args  # noqa: E402  (benchmarks/_unseen.py)

ABLATIONS = {"Plug-and-Play": (0.8, 0.5), "no features": (0.0, 0.5), "no attention": (0.8, 0.0),
             "zero injection": (0.0, 0.0)}
DEFAULT_INVERSION_STEPS = inspect.signature(invert_guidance_image).parameters["inversion_steps"].default


@dataclass
class Scores:
    """Per image: the translation's analysis against the input's."""

    success: list[bool] = field(default_factory=list)
    colour: list[bool] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    big: list[bool] = field(default_factory=list)  # the input's object is "big" (half extent 14 px, else 8)

    def add(self, analysis, source, target_prompt: str, colour: str, big: bool) -> None:
        self.success.append(analysis.found and all(matches(analysis, parse_caption(target_prompt)).values()))
        self.colour.append(analysis.colour == colour)
        self.iou.append(mask_iou(analysis.mask, source.mask))
        self.big.append(big)

    def row(self) -> str:
        iou, big = np.array(self.iou), np.array(self.big)
        by_size = " ".join(f"{iou[m].mean():>6.3f}" if m.any() else f"{'-':>6}" for m in (big, ~big))
        return (f"{100 * np.mean(self.success):>7.0f}% {100 * np.mean(self.colour):>7.0f}% "
                f"{iou.mean():>9.3f} {iou.min():>8.3f} {by_size}")


class EveryDecoderResBlock(PlugAndPlay):
    """A variant for the study: the source's features replace the target's at *every* decoder
    ResBlock (the toy has four, at 4x4 and 8x8), not only the paper's one."""

    def resnet_residual(self, h: torch.Tensor, site) -> torch.Tensor:
        if site.location != "up" or self.step >= self.feature_steps:
            return h
        return h[:1].expand_as(h)  # (U, C, H, W)


def score(sd: StableDiffusion, latents: list[torch.Tensor], sources, prompts: list[str], colours: list[str],
          big: list[bool]) -> Scores:
    images = torch.cat([sd.decode(z) for z in latents])  # (n, 3, 64, 64) in [0, 1]
    scores = Scores()
    for analysis, source, prompt, colour, b in zip(analyze_batch(images), sources, prompts, colours, big):
        scores.add(analysis, source, prompt, colour, b)
    return scores


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def toy_tables(args: argparse.Namespace) -> None:
    sd = StableDiffusion.from_folder(args.weights)
    data, rng = ToyDataset(args.seed), np.random.default_rng(args.seed)
    g, steps = args.guidance, args.steps
    print(f"toy model {args.weights}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} "
          f"unseen images (ToyDataset seed {args.seed}), colour swaps, {steps} steps, guidance {g}, "
          f"negative prompt \"\"; "
          f"library default inversion_steps={DEFAULT_INVERSION_STEPS} (None: = steps)")
    default_n = steps if DEFAULT_INVERSION_STEPS is None else DEFAULT_INVERSION_STEPS
    ns = list(dict.fromkeys(args.inversion_steps + [default_n]))
    empty = sd.encode_prompts([""])
    T = int(sd.timesteps(steps)[0])

    xs, vae_images, prompts, colours, big = [], [], {"short": [], "full": []}, [], []
    scenes = []
    round_trips = [g, args.low_guidance, 1.0]  # guidance scales of the round trip (the first is the study's)
    ceilings = {"DDIM reconstruction": []} | {f"round trip s={s:g}": [] for s in round_trips}  # latents
    psnr = {"VAE alone": []} | {f"{kind} {n}": [] for n in ns for kind in ("DDIM", "PnP")}
    invert_s = {n: [] for n in ns}
    study = {(n, p): [] for n in ns for p in prompts}  # translations' latents
    variants = {"every dec. ResBlock": (0.8, 0.5, g),  # (feature, attention injection, guidance)
                "  ... for all steps": (1.0, 1.0, g),
                f"PnP guidance {args.low_guidance:g}": (0.8, 0.5, args.low_guidance)}
    methods = {(m, p): [] for m in [*ABLATIONS, *variants, *(f"SDEdit {s:g}" for s in args.strengths)] for p in prompts}
    times = {"plain sampling": [], "Plug-and-Play": [], "  inversion": [], "  translation": []}
    for k in range(args.images):
        x, _, scene = data[k]
        x = x[None]  # (1, 3, 64, 64) in [0, 1]
        edited = swapped(scene, "colour", rng)
        colour = edited.colour
        xs.append(x)
        scenes.append(scene)
        colours.append(colour)
        big.append(scene.size == "big")
        prompts["short"].append(caption(edited, LAYOUT_FREE))
        prompts["full"].append(caption(edited))
        for n in ns:
            inv, seconds = timed(invert_guidance_image, sd, x, steps=steps, inversion_steps=n, progress=False)
            invert_s[n].append(seconds)
            if n == ns[0]:
                vae_images.append(sd.decode(inv.z0))  # (1, 3, 64, 64)
                psnr["VAE alone"].append(psnr_db(vae_images[-1], x).item())
            z = sd.denoise(inv.latents.at(T), empty, None, steps=steps, guidance_scale=1.0, progress=False)
            psnr[f"DDIM {n}"].append(psnr_db(sd.decode(z), x).item())
            if n == default_n:
                ceilings["DDIM reconstruction"].append(z)
            z = plug_and_play(sd, inv, caption(scene), negative_prompt="", guidance_scale=g, feature_injection=1.0,
                              attention_injection=1.0, progress=False)
            psnr[f"PnP {n}"].append(psnr_db(sd.decode(z), x).item())
            if n == default_n:
                ceilings[f"round trip s={g:g}"].append(z)
                for scale in round_trips[1:]:
                    ceilings[f"round trip s={scale:g}"].append(plug_and_play(
                        sd, inv, caption(scene), negative_prompt="", guidance_scale=scale, feature_injection=1.0,
                        attention_injection=1.0, progress=False))
            for p in prompts:
                study[n, p].append(plug_and_play(sd, inv, prompts[p][-1], negative_prompt="", guidance_scale=g,
                                                 progress=False))
            if n != default_n:
                continue
            for p in prompts:
                for name, (f, a) in ABLATIONS.items():
                    z = study[n, p][-1] if name == "Plug-and-Play" else plug_and_play(
                        sd, inv, prompts[p][-1], negative_prompt="", guidance_scale=g, feature_injection=f,
                        attention_injection=a, progress=False)
                    methods[name, p].append(z)
                for name, (f, a, guidance) in variants.items():
                    fractions = dict(feature_injection=f, attention_injection=a) if name.startswith("PnP") else dict(
                        editor=EveryDecoderResBlock(injection_sites(sd.unet.sites), steps, f, a))
                    methods[name, p].append(plug_and_play(sd, inv, prompts[p][-1], negative_prompt="",
                                                          guidance_scale=guidance, progress=False, **fractions))
                for s in args.strengths:
                    methods[f"SDEdit {s:g}", p].append(sdedit(sd, inv.z0, prompts[p][-1], strength=s, steps=steps,
                                                              guidance_scale=g, negative_prompt="", seed=0,
                                                              progress=False))
        # time: prompt to pixels, decode included, against plain text-to-image of the target prompt
        _, plain = timed(sd.text_to_image, [prompts["full"][-1]], negative_prompt="", guidance_scale=g, steps=steps,
                         seed=k, progress=False)
        start = time.perf_counter()
        inv = invert_guidance_image(sd, x, steps=steps, progress=False)
        middle = time.perf_counter()
        sd.decode(plug_and_play(sd, inv, prompts["full"][-1], negative_prompt="", guidance_scale=g, progress=False))
        end = time.perf_counter()
        for name, value in zip(times, (plain, end - start, middle - start, end - middle)):
            times[name].append(value)
        print(f"  {k}: {caption(scene):<58} -> {colour:<7} PSNR VAE {psnr['VAE alone'][-1]:5.2f}  "
              + "  ".join(f"{name} {v[-1]:5.2f}" for name, v in psnr.items() if name != "VAE alone"), flush=True)

    source_analyses = analyze_batch(torch.cat(xs))
    mean = statistics.mean
    print(f"\n1. inversion steps ({args.images} images; PSNR dB mean / min; translations with the default 0.8 / 0.5)")
    columns = f"{'success':>8} {'colour':>8} {'IoU mean':>9} {'IoU min':>8} {'big':>6} {'small':>6}"
    print(f"{'':>9} {'':>9} {'DDIM rec':>13} {'PnP round trip':>15}   {'short prompt':^36}   {'full prompt':^36}")
    print(f"{'inversion':>9} {'invert s':>9} {'mean':>6} {'min':>6} {'mean':>7} {'min':>7}   {columns}   {columns}")
    for n in ns:
        d, r = psnr[f"DDIM {n}"], psnr[f"PnP {n}"]
        rows = [score(sd, study[n, p], source_analyses, prompts[p], colours, big).row() for p in prompts]
        print(f"{n:>9} {mean(invert_s[n]):>9.3f} {mean(d):>6.2f} {min(d):>6.2f} {mean(r):>7.2f} {min(r):>7.2f}   "
              f"{rows[0]}   {rows[1]}")
    v = psnr["VAE alone"]
    print(f"{'VAE alone':>9} {'':>9} {mean(v):>6.2f} {min(v):>6.2f}")

    print(f"\n2. methods (inversion_steps {default_n}; {args.images} images)")
    print(f"{'method':<20} {'prompt':<6} {columns}")
    vae = [mask_iou(a.mask, b.mask) for a, b in zip(analyze_batch(torch.cat(vae_images)), source_analyses)]
    vae_big = " ".join(f"{np.mean([v for v, b in zip(vae, big) if b == want] or [np.nan]):>6.3f}"
                       for want in (True, False))
    print(f"{'VAE alone':<20} {'':<6} {'':>8} {'':>8} {mean(vae):>9.3f} {min(vae):>8.3f} {vae_big}")
    sources, source_colours = [caption(scene) for scene in scenes], [scene.colour for scene in scenes]
    for name, latents in ceilings.items():  # what the mask keeps when nothing is asked to change
        print(f"{name:<20} {'source':<6} {score(sd, latents, source_analyses, sources, source_colours, big).row()}")
    for (name, p), latents in methods.items():
        print(f"{name:<20} {p:<6} {score(sd, latents, source_analyses, prompts[p], colours, big).row()}")

    print(f"\n3. time per image (s, median over {args.images}; prompt to pixels)")
    base = statistics.median(times["plain sampling"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16} {median:>8.3f}   {median / base:>5.2f}x plain sampling")


class StepClock(PlugAndPlay):
    """Plug-and-Play that notes the wall time of each step (begin_step to end_step)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []

    def begin_step(self, i, t):
        super().begin_step(i, t)
        self.start = time.perf_counter()

    def end_step(self, latents, i, t):
        self.seconds.append(time.perf_counter() - self.start)
        return latents


def sd_table(args: argparse.Namespace) -> None:
    from _random_sd import sd_v1_random  # benchmarks/_random_sd.py
    from ldm.tokenizer import WordTokenizer

    sd, steps, g = sd_v1_random(WordTokenizer(["a", "photo", "of", "cat"])), args.sd_steps, 7.5
    prompt = "a photo of a cat"
    z0 = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))  # (1, 4, 32, 32)
    print(f"\nSD v1.5 configuration, random weights, fp32 CPU ({torch.get_num_threads()} threads), latent 4x32x32, "
          f"{steps} steps, guidance {g}, negative prompt \"\" (word tokenizer); time only, latents only (no decode)")
    cond, uncond = sd.encode_prompts([prompt]), sd.encode_prompts([""])
    sd.denoise(z0, cond, uncond, steps=1, guidance_scale=g, progress=False)  # warm-up
    _, plain = timed(sd.denoise, torch.randn_like(z0), cond, uncond, steps=steps, guidance_scale=g, progress=False)
    inv, invert = timed(invert_guidance_image, sd, z0, steps=steps, progress=False)
    clock = StepClock(injection_sites(sd.unet.sites), steps)
    _, translate = timed(plug_and_play, sd, inv, prompt, negative_prompt="", guidance_scale=g, editor=clock,
                         progress=False)
    print(f"  plain sampling {plain:8.2f} s   inversion {invert:8.2f} s   translation {translate:8.2f} s   "
          f"inversion + translation {(invert + translate) / plain:.2f}x plain")
    # 50-step estimate: the steps' kinds (both injections / features only / none) by their 50-step counts
    kinds = [(clock.feature_steps > i, clock.attention_steps > i) for i in range(steps)]
    per_kind = {kind: statistics.mean(s for s, k in zip(clock.seconds, kinds) if k == kind) for kind in set(kinds)}
    counts = {(True, True): 25, (True, False): 15, (False, False): 10}
    if set(per_kind) == set(counts):
        step_plain, step_invert = plain / steps, invert / steps
        estimate = sum(per_kind[kind] * n for kind, n in counts.items()) + 50 * step_invert
        print(f"  per step: plain {step_plain:.2f} s, inversion {step_invert:.2f} s, translation with both injections "
              f"{per_kind[True, True]:.2f} s, features only {per_kind[True, False]:.2f} s, none "
              f"{per_kind[False, False]:.2f} s; 50-step estimate: inversion + translation "
              f"{estimate / (50 * step_plain):.2f}x plain sampling")
    del sd
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plug-and-Play: time, inversion steps, and what it keeps against SDEdit.")
    add_unseen_image_args(p, images=20, guidance=TOY_GUIDANCE_SCALE)
    p.add_argument("--inversion-steps", type=int, nargs="+", default=[50, 200, 999])
    p.add_argument("--low-guidance", type=float, default=3.0, help="a second guidance scale for Plug-and-Play")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.3, 0.5, 0.7], help="SDEdit strengths")
    p.add_argument("--no-sd", action="store_true", help="skip the SD v1.5-size timing")
    p.add_argument("--sd-steps", type=int, default=3)
    args = p.parse_args(argv)
    apply_unseen_image_args(p, args)
    toy_tables(args)
    if not args.no_sd:
        sd_table(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
