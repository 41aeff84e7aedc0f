"""Does an edit do what it claims? Prompt-to-Prompt on the toy model, judged by the analyzer.

A *word swap* changes one word of a caption, "a red circle" -> "a red square", and asks for an
image that shows the new word while keeping everything else of the source image: the object's
place and extent, its other attributes, the background. Each case is measured on the pair
(source image, target image) sampled from one starting latent z_T:

    success            the analyzer finds, in the target, every attribute the target caption
                       names: the new value of the swapped one, and the source's other named ones
    mask IoU           |M_s and M_t| / |M_s or M_t| of the analyzer's object masks (the pixels)
    box IoU            the same for the fitted extent boxes [c - r, c + r]^2 (c the fitted centre,
                       r the half extent: every shape fits that square, render.py)
    background change  mean |x_s - x_t| over the pixels (and channels, on [0, 1]) outside both
                       masks, each dilated by ``BACKGROUND_MARGIN`` px (the anti-aliased rim and a
                       little blur are not background); the background is *kept* when this is
                       below ``BACKGROUND_KEPT`` (a flat colour resampled, not another colour)

Why two IoUs. Pixel-mask IoU is the right measure of "the layout is kept" when the shape stays
(a colour swap), but a shape swap changes the mask even when the layout is perfectly kept: a
circle and a square of the same centre and extent overlap by pi r^2 / 4 r^2 = pi/4 = 0.785, a
triangle and a square by 2 r^2 / 4 r^2 = 0.5 (render.py's areas; tests/test_p2p_toy.py checks
both on renders). So for shape swaps the box IoU is the layout measure (1 for a perfectly kept
place and extent, whatever the shapes), and the mask IoU is reported beside it for comparison
with the colour swaps.

Methods (:func:`evaluate_edits`): "baseline" samples [source, target] from the same z_T with no
editor (the target prompt alone decides the layout), "p2p" runs :func:`prompt_to_prompt` from that
z_T (the case's seed), with ``blend_swap=True`` local blending of the swapped words [old, new].

Real images (:func:`real_image_edits`): rendered scenes the model never trained on are inverted
under their full true caption (null-text, negative-prompt or DDIM inversion, editing/null_text.py),
and the inversion is edited with one word swapped; the source row of the edit is the reconstruction.

``benchmarks/p2p_semantics.py`` prints the figures for all of these; tests/test_p2p_toy.py's
docstrings carry the measured values its bounds come from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ddpm.reverse import initial_noise
from editing.null_text import ddim_inversion, negative_prompt_inversion, null_text_inversion
from editing.prompt_to_prompt import LocalBlend, prompt_to_prompt

from .analyze import Analysis, analyze_batch, mask_iou, matches
from .evaluate import psnr_db
from .model import TOY_GUIDANCE_SCALE
from .render import ToyDataset
from .world import CHOICES, OMIT_PROBABILITY, caption, parse_caption, random_scene, with_attribute

# Attributes a word swap can change: one word in the caption each ("big" -> "small", "red" ->
# "blue", "circle" -> "square", "on a gray background" -> "on a white background"). The position
# phrases have two or three words ("in the center", "at the top left"): not a word swap.
SWAPPABLE = ("shape", "colour", "size", "background")
METHODS = ("baseline", "p2p")
INVERSIONS = {"null-text": null_text_inversion, "negative-prompt": negative_prompt_inversion, "ddim": ddim_inversion}
LAYOUT_FREE = ("size", "position", "background")  # the default ``omit``: captions "a <colour> <shape>"
# Pixels a mask is grown by before the background is compared: the one-pixel anti-aliased rim of
# a render plus about a pixel of the generator's blur (analyze.py: edges are blurry or wobbly).
BACKGROUND_MARGIN = 2
# A case "keeps the background" when its background change is below this. Measured on the toy
# model, a background sampled twice in the same colour differs by 0.001-0.008 (the decoder's noise
# on a flat colour); the two nearest backgrounds, blue and gray, differ by 0.297 on average over
# the channels. 0.02 is over twice the first and 15 times below the second.
BACKGROUND_KEPT = 0.02


@dataclass(frozen=True)
class EditCase:
    """One word swap: sample ``source`` and ``target`` from the z_T of ``seed`` (None: a real image's inversion)."""

    source: str
    target: str
    attribute: str
    old: str
    new: str
    seed: int | None


def _check_attribute(attribute: str, omit) -> None:
    if attribute not in SWAPPABLE:
        raise ValueError(f"attribute {attribute!r} cannot be swapped word for word; expected one of {SWAPPABLE}")
    if attribute in set(omit):
        raise ValueError(f"attribute {attribute!r} is in omit {tuple(omit)}: a caption that leaves it out has "
                         f"no word to swap")


def _check_count(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def swapped(scene, attribute: str, rng: np.random.Generator):
    """The scene with ``attribute`` set to another value drawn at random (a colour other than the
    background's, a background other than the object's colour)."""
    old = getattr(scene, attribute)
    clash = {"colour": scene.background, "background": scene.colour}.get(attribute)  # must differ from the new value
    forbidden = {old, clash}
    options = [v for v in CHOICES[attribute] if v not in forbidden]
    return with_attribute(scene, **{attribute: options[rng.integers(len(options))]})


def swap_cases(n: int, seed: int, attribute: str, omit=LAYOUT_FREE) -> list[EditCase]:
    """``n`` word swaps of ``attribute``: a random scene's caption (leaving out ``omit``) and the
    same caption with the attribute's word changed; each case gets its own sampling seed.
    Deterministic in ``seed``."""
    _check_count("n", n)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    bad = set(omit) - set(OMIT_PROBABILITY)
    if bad:
        raise ValueError(f"cannot omit {sorted(bad)}; a caption may leave out {tuple(OMIT_PROBABILITY)}")
    _check_attribute(attribute, omit)
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        scene = random_scene(rng)
        edited = swapped(scene, attribute, rng)
        cases.append(EditCase(caption(scene, omit), caption(edited, omit), attribute, getattr(scene, attribute),
                              getattr(edited, attribute), int(rng.integers(2**31))))
    return cases


# ------------------------------------------------------------------------------------ scoring
def extent_box(a: Analysis) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) = centre -+ half extent of the analyzer's winning shape fit; None if no object."""
    if not a.found:
        return None
    (cx, cy), r = a.centre, a.half_extent
    return cx - r, cy - r, cx + r, cy + r


def box_iou(a: Analysis, b: Analysis) -> float:
    """IoU of the two fitted extent boxes (areas of the continuous squares); 0 if either has no object."""
    p, q = extent_box(a), extent_box(b)
    if p is None or q is None:
        return 0.0
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = w * h
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A (H, W) bool mask grown by ``pixels`` in every direction (a (2p+1)^2 square window)."""
    m = torch.from_numpy(np.array(mask, dtype=np.float32))[None, None]  # (1, 1, H, W)
    grown = F.max_pool2d(m, kernel_size=2 * pixels + 1, stride=1, padding=pixels)  # (1, 1, H, W)
    return grown[0, 0].bool().numpy()


def background_change(source: torch.Tensor, target: torch.Tensor, a: Analysis, b: Analysis,
                      margin: int = BACKGROUND_MARGIN) -> float:
    """Mean |source - target| (images (3, H, W) in [0, 1]) over the pixels outside both objects'
    masks dilated by ``margin``; NaN if no pixel is left."""
    outside = torch.from_numpy(~(dilate(a.mask, margin) | dilate(b.mask, margin)))  # (H, W)
    if not outside.any():
        return float("nan")
    return (source - target).abs()[:, outside].mean().item()  # (3, n_outside) -> scalar


@dataclass
class EditScore:
    """The measures of one case (see the module docstring)."""

    case: EditCase
    success: bool
    source_ok: bool  # the source image shows what its caption names (else the edit had a poor start)
    mask_iou: float
    box_iou: float
    background_change: float
    source: Analysis = field(repr=False)
    target: Analysis = field(repr=False)


def score_pair(case: EditCase, source: torch.Tensor, target: torch.Tensor,
               analyses: tuple[Analysis, Analysis] | None = None) -> EditScore:
    """Score one (source, target) pair of images (3, 64, 64) in [0, 1] for ``case``."""
    a, b = analyses if analyses is not None else analyze_batch(torch.stack([source, target]))

    def shows(analysis: Analysis, text: str) -> bool:
        return analysis.found and all(matches(analysis, parse_caption(text)).values())

    return EditScore(case, shows(b, case.target), shows(a, case.source), mask_iou(a.mask, b.mask), box_iou(a, b),
                     background_change(source, target, a, b), a, b)


@dataclass
class EditScores:
    """Every case's score for one method, and the images (n, 2, 3, 64, 64) in [0, 1]: source, target."""

    method: str
    scores: list[EditScore]
    images: torch.Tensor

    def values(self, name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in self.scores], dtype=float)

    def summary(self) -> dict[str, float]:
        """Over all cases: the rates of success, kept background and good sources, and the mean
        mask IoU, box IoU and background change."""
        return {"success": float(self.values("success").mean()), "mask_iou": float(self.values("mask_iou").mean()),
                "box_iou": float(self.values("box_iou").mean()),
                "background_change": float(np.nanmean(self.values("background_change"))),
                "background_kept": float((self.values("background_change") < BACKGROUND_KEPT).mean()),
                "source_ok": float(self.values("source_ok").mean()), "n": len(self.scores)}


def start_latent(sd, seed: int) -> torch.Tensor:
    """z_T (1, 4, h, w) for ``seed``: the one ``prompt_to_prompt(..., seed=seed)`` starts from."""
    h = w = sd.image_size // sd.latent_factor
    return initial_noise((1, sd.unet.config.in_channels, h, w), None, torch.Generator().manual_seed(seed),
                         torch.float32, sd.device)  # (1, 4, h, w)


def evaluate_edits(sd, cases: list[EditCase], method: str, *, blend_swap: bool = False,
                   blend_options: dict | None = None, guidance_scale: float = TOY_GUIDANCE_SCALE, steps: int = 50,
                   batch: int = 10, progress: bool = True, **p2p_kwargs) -> EditScores:
    """Sample every case's [source, target] from its seed's z_T and score it.

    "baseline": ``sd.text_to_image`` with no editor, ``batch`` cases per call (2 * batch prompts,
    each pair sharing its z_T). "p2p": :func:`prompt_to_prompt` with ``p2p_kwargs`` (``edit``,
    ``injection``), one case per call; ``blend_swap`` adds local blending of the swapped words
    [old, new], ``LocalBlend([old, new], **blend_options)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(cases, (list, tuple)) or not cases or not all(isinstance(c, EditCase) for c in cases):
        raise ValueError(f"cases must be a non-empty list of EditCase, got {cases!r}")
    if any(c.seed is None for c in cases):
        raise ValueError("every case needs a sampling seed (seed None is a real image's: see real_image_edits)")
    if method == "baseline" and (blend_swap or p2p_kwargs):
        raise ValueError(f"the baseline samples without an editor; got editing options "
                         f"{sorted(p2p_kwargs) + (['blend_swap'] if blend_swap else [])}")
    if "blend" in p2p_kwargs:
        raise ValueError("the blend words are each case's swapped words: pass blend_swap=True")
    if blend_options is not None and not blend_swap:
        raise ValueError(f"blend_options {blend_options!r} need blend_swap=True")
    _check_count("batch", batch)
    pairs = []  # (2, 3, 64, 64) per case
    if method == "baseline":
        for i in tqdm(range(0, len(cases), batch), desc="baseline", disable=not progress):
            chunk = cases[i:i + batch]
            z = torch.cat([start_latent(sd, c.seed).expand(2, -1, -1, -1) for c in chunk])  # (2b, 4, h, w)
            prompts = [p for c in chunk for p in (c.source, c.target)]
            images = sd.text_to_image(prompts, guidance_scale=guidance_scale, steps=steps, latents=z,
                                      progress=False).images.cpu()  # (2b, 3, 64, 64)
            pairs += list(images.unflatten(0, (len(chunk), 2)))  # b of (2, 3, 64, 64)
    else:
        for c in tqdm(cases, desc="p2p + blend" if blend_swap else "p2p", disable=not progress):
            kwargs = p2p_kwargs
            if blend_swap:
                kwargs = dict(p2p_kwargs, blend=LocalBlend([c.old, c.new], **(blend_options or {})))
            result = prompt_to_prompt(sd, [c.source, c.target], guidance_scale=guidance_scale, steps=steps,
                                      seed=c.seed, progress=False, **kwargs)
            pairs.append(result.images.cpu())  # (2, 3, 64, 64)
    images = torch.stack(pairs)  # (n, 2, 3, 64, 64)
    analyses = analyze_batch(images.flatten(0, 1))  # 2n of them: each case's source, then its target
    scores = [score_pair(c, images[k, 0], images[k, 1], (analyses[2 * k], analyses[2 * k + 1]))
              for k, c in enumerate(cases)]
    return EditScores(method + (" + blend" if blend_swap else ""), scores, images)


# ------------------------------------------------------------------------------- real images
@dataclass
class RealEdit:
    """One unseen rendered image, its reconstruction (the edit's source row) and its edit."""

    index: int  # in ToyDataset(seed)
    psnr: float  # dB on [0, 1], reconstruction vs render
    score: EditScore  # source = the reconstruction, target = the edit; both captions name all five attributes


@dataclass
class RealEdits:
    inversion: str
    edits: list[RealEdit]
    images: torch.Tensor  # (n, 3, 3, 64, 64) in [0, 1]: render, reconstruction, edit

    def summary(self) -> dict[str, float]:
        values = lambda name: np.array([getattr(e.score, name) for e in self.edits], dtype=float)  # noqa: E731
        return {"psnr": float(np.mean([e.psnr for e in self.edits])), "recon_ok": float(values("source_ok").mean()),
                "success": float(values("success").mean()), "mask_iou": float(values("mask_iou").mean()),
                "box_iou": float(values("box_iou").mean()),
                "background_change": float(np.nanmean(values("background_change"))),
                "background_kept": float((values("background_change") < BACKGROUND_KEPT).mean()), "n": len(self.edits)}


def real_image_edits(sd, n: int, seed: int, attribute: str, inversion: str = "null-text", *,
                     guidance_scale: float = TOY_GUIDANCE_SCALE, steps: int = 50, progress: bool = True,
                     **p2p_kwargs) -> RealEdits:
    """Invert images 0..n-1 of ``ToyDataset(seed)`` (use a seed the model did not train on) under
    their full true caption, and edit each with ``attribute``'s word swapped (the new value drawn
    as in :func:`swap_cases`, from ``seed``). The analyzer checks that the reconstruction shows all
    five attributes of the render (``source_ok``) and that the edit shows the edited scene's five
    (``success``): the new value, and size, position, background and the rest kept."""
    _check_count("n", n)
    _check_attribute(attribute, ())
    if inversion not in INVERSIONS:
        raise ValueError(f"inversion must be one of {tuple(INVERSIONS)}, got {inversion!r}")
    if blend := p2p_kwargs.get("blend"):
        raise ValueError(f"blend {blend!r}: the swap is chosen here, so there are no words to give")
    data, rng = ToyDataset(seed), np.random.default_rng(seed)
    edits, images = [], []
    for k in tqdm(range(n), desc=f"{inversion} edits", disable=not progress):
        x, _, scene = data[k]
        x = x[None]  # (1, 3, 64, 64) in [0, 1]
        edited = swapped(scene, attribute, rng)
        case = EditCase(caption(scene), caption(edited), attribute, getattr(scene, attribute),
                        getattr(edited, attribute), None)
        inv = INVERSIONS[inversion](sd, sd.encode_image(x), case.source, steps=steps, guidance_scale=guidance_scale,
                                    progress=False)
        result = prompt_to_prompt(sd, [case.source, case.target], inversion=inv, progress=False, **p2p_kwargs)
        recon, edit = result.images.cpu()  # (3, 64, 64) each
        edits.append(RealEdit(k, psnr_db(recon[None], x).item(), score_pair(case, recon, edit)))
        images.append(torch.stack([x[0], recon, edit]))  # (3, 3, 64, 64)
    return RealEdits(inversion, edits, torch.stack(images))

