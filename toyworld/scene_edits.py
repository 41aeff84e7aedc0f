"""Word swaps in scenes of the second world: does an edit change one object and keep the rest?

A case takes a fresh scene of one or two objects, captions it naming each object's shape and colour
(size, position and background left free, so the caption alone does not fix the layout), and swaps
one word: the shape or the colour of one object (the *edited* object). Source and target are
sampled from one starting latent z_T. Measured on each (source, target) pair, with the second
world's analyzer pairing the captions' objects with the objects painted:

    success        the target shows every attribute its caption names, and as many objects
    edited kept    colour swaps: the edited object's mask IoU between source and target;
                   shape swaps: the IoU of its fitted extent boxes [c - r, c + r]^2 (a circle and a
                   square of one place and extent have mask IoU pi/4, box IoU 1; edit_eval.py)
    other kept     two-object scenes: the other object shows its named attributes in the target,
                   and its mask IoU between source and target
    background     mean |source - target| outside both images' objects, each grown by 2 px

Methods: "baseline" (the target prompt alone from the same z_T, no editor) and Prompt-to-Prompt
with any of :func:`editing.prompt_to_prompt.prompt_to_prompt`'s options.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from editing.prompt_to_prompt import prompt_to_prompt

from .analyze import mask_iou
from .edit_eval import BACKGROUND_MARGIN, dilate, start_latent
from .scene_analysis import ObjectReading, match_objects, read_scene
from .scenes import describe, parse_description, random_scene, with_object
from .world import COLOURS, SHAPES


@dataclass(frozen=True)
class SceneSwap:
    source: str
    target: str
    attribute: str  # "shape" or "colour"
    edited: int  # index of the edited object in the captions' object order
    old: str
    new: str
    seed: int


def scene_swap_cases(n: int, seed: int, attribute: str, objects: int) -> list[SceneSwap]:
    """``n`` swaps of ``attribute`` ("shape" or "colour") of one object in scenes of ``objects``
    (1 or 2) objects; the new value is one no object of the scene has. Deterministic in ``seed``."""
    if attribute not in ("shape", "colour"):
        raise ValueError(f"attribute must be 'shape' or 'colour', got {attribute!r}")
    if objects not in (1, 2):
        raise ValueError(f"objects must be 1 or 2, got {objects!r}")
    rng = np.random.default_rng([seed, 5, objects])
    cases = []
    while len(cases) < n:
        scene = random_scene(rng, n_objects=objects)
        k = int(rng.integers(objects))
        taken = {getattr(o, attribute) for o in scene.objects}
        palette = SHAPES if attribute == "shape" else tuple(COLOURS)
        options = [v for v in palette if v not in taken]
        new = options[rng.integers(len(options))]
        try:
            edited = with_object(scene, k, **{attribute: new})
        except ValueError:  # the new colour is invisible on this background, or the new shape overlaps
            continue
        omit = [{"size", "position"}] * objects
        source = describe(scene, omit, omit_background=True)
        target = describe(edited, omit, omit_background=True)
        cases.append(SceneSwap(source, target, attribute, k, getattr(scene.objects[k], attribute), new,
                               int(rng.integers(2**31))))
    return cases


def _box(o: ObjectReading) -> tuple[float, float, float, float]:
    (cx, cy), r = o.centre, o.half_extent
    return cx - r, cy - r, cx + r, cy + r


def box_iou(a: ObjectReading | None, b: ObjectReading | None) -> float:
    if a is None or b is None:
        return 0.0
    p, q = _box(a), _box(b)
    inter = max(0.0, min(p[2], q[2]) - max(p[0], q[0])) * max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


def _iou(a: ObjectReading | None, b: ObjectReading | None) -> float:
    return 0.0 if a is None or b is None else mask_iou(a.mask, b.mask)


def score_swap(case: SceneSwap, source: torch.Tensor, target: torch.Tensor) -> dict:
    """The measures of the module docstring for one pair of images (3, 64, 64) in [0, 1]."""
    rs, rt = (read_scene(x.permute(1, 2, 0).double().clamp(0, 1).numpy()) for x in (source, target))
    src_named, tgt_named = parse_description(case.source)["objects"], parse_description(case.target)["objects"]
    ms, mt = match_objects(rs, src_named), match_objects(rt, tgt_named)
    shows = lambda m, named: m is not None and all(m.attributes()[a] == v for a, v in named.items())  # noqa: E731
    k = case.edited
    out = {"success": len(rt.objects) == len(tgt_named) and all(shows(m, o) for m, o in zip(mt, tgt_named)),
           "source_ok": len(rs.objects) == len(src_named) and all(shows(m, o) for m, o in zip(ms, src_named)),
           "edited_mask_iou": _iou(ms[k], mt[k]), "edited_box_iou": box_iou(ms[k], mt[k])}
    out["edited_kept"] = out["edited_mask_iou"] if case.attribute == "colour" else out["edited_box_iou"]
    if len(src_named) == 2:
        j = 1 - k
        out["other_attributes_kept"] = shows(mt[j], tgt_named[j])
        out["other_mask_iou"] = _iou(ms[j], mt[j])
    outside = ~(dilate(rs.foreground, BACKGROUND_MARGIN) | dilate(rt.foreground, BACKGROUND_MARGIN))
    out["background_change"] = float((source - target).abs()[:, torch.from_numpy(outside)].mean()) if outside.any() \
        else float("nan")
    return out


def evaluate_swaps(sd, cases: list[SceneSwap], method: str, guidance_scale: float, steps: int = 50,
                   progress: bool = True, **p2p_kwargs) -> list[dict]:
    """Every case's measures for ``method`` ("baseline" or "p2p" with ``p2p_kwargs``)."""
    if method not in ("baseline", "p2p"):
        raise ValueError(f"method must be 'baseline' or 'p2p', got {method!r}")
    rows = []
    for c in tqdm(cases, desc=method, disable=not progress):
        if method == "baseline":
            z = start_latent(sd, c.seed).expand(2, -1, -1, -1)
            images = sd.text_to_image([c.source, c.target], guidance_scale=guidance_scale, steps=steps, latents=z,
                                      progress=False).images.cpu()
        else:
            images = prompt_to_prompt(sd, [c.source, c.target], guidance_scale=guidance_scale, steps=steps,
                                      seed=c.seed, progress=False, **p2p_kwargs).images.cpu()
        rows.append(score_swap(c, images[0], images[1]))
    return rows


def summarize(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.nanmean([float(r[k]) for r in rows if k in r])) for k in keys} | {"n": len(rows)}
