"""Do a model's cross-attention maps land on their words? The diagnostics of the second toy model.

Prompt-to-Prompt rests on one observation (Hertz et al. 2022, section 3.1 and Figure 4): the
cross-attention map of a word, averaged over the sampling steps, lies on the pixels the word paints.
Here that is measured on generated images. For each prompt the model samples an image while an
``AttentionStore`` keeps the maps; the second world's analyzer reads the image and pairs the
caption's objects with the objects painted. Then for each object's shape word and colour word, with
M the word's map at one resolution, upsampled bilinearly to the image and normalised to sum 1,
and O the object's mask:

    concentration = (mass of M on O) / (|O| / |image|)     1 for a flat map, |image| / |O| at most
    own > other     in two-object scenes: M puts more mass on its own object than on the other one
    IoU             of {M > 1/2 max M} with O

The maps are read at the finest cross-attention resolution and at 1/4 of the latent side (where
SD's local blending and self-attention injection operate: 16x16 of 64x64). Where the attention goes
overall is reported too: the share of every pixel's attention (each row of a map sums to 1) taken
by the first token <bos>, by the caption's words, by <eos> and by the padding after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from editing.attention_store import AttentionStore

from .scene_analysis import match_objects, read_scene
from .scenes import OMIT_PROBABILITY, describe, parse_description, random_scene


@dataclass(frozen=True)
class WordMap:
    """One word's measurements on one generated image."""

    prompt: int
    word: str
    kind: str  # "shape" or "colour"
    objects: int  # objects the caption names
    size: float  # the map's side as a fraction of the latent side
    concentration: float
    own_over_other: bool | None  # None unless the caption names exactly two objects
    iou: float


def diagnostic_prompts(n: int, seed: int = 2024) -> list[str]:
    """``n`` captions of fresh scenes, a third each of one, two and three objects; each object's
    shape and colour named (they are the words measured), size and position left out at the
    training rates, the background named or not likewise."""
    rng = np.random.default_rng([seed, 11])
    prompts = []
    for i in range(n):
        scene = random_scene(rng, n_objects=1 + i % 3)
        omit = [{a for a in ("size", "position") if rng.random() < OMIT_PROBABILITY[a]} for _ in scene.objects]
        prompts.append(describe(scene, omit, rng.random() < OMIT_PROBABILITY["background"],
                                rng.permutation(len(scene.objects)).tolist()))
    return prompts


def word_tokens(caption: str) -> list[tuple[int, int, str, str]]:
    """(object index, token index, word, kind) of every shape and colour word: the word tokenizer puts
    <bos> at 0 and word k of the caption at k + 1."""
    words = caption.lower().split()
    out, obj = [], 0
    parsed = parse_description(caption)["objects"]
    for k, w in enumerate(words):
        if w == "and":
            obj += 1
        elif w == parsed[min(obj, len(parsed) - 1)].get("shape"):
            out.append((obj, k + 1, w, "shape"))
        elif w == parsed[min(obj, len(parsed) - 1)].get("colour"):
            out.append((obj, k + 1, w, "colour"))
    return out


def mass_shares(maps: torch.Tensor, n_words: int) -> dict[str, float]:
    """Mean share of a pixel's attention on <bos>, the words, <eos> and the padding: maps (h, w, 77)."""
    m = maps.flatten(0, 1)  # (hw, 77), rows sum to 1
    return {"bos": float(m[:, 0].mean()), "words": float(m[:, 1:1 + n_words].sum(1).mean()),
            "eos": float(m[:, 1 + n_words].mean()), "padding": float(m[:, 2 + n_words:].sum(1).mean())}


def upsampled(word_map: torch.Tensor, side: int) -> np.ndarray:
    """A (h, w) map upsampled bilinearly to (side, side) and normalised to sum 1."""
    up = F.interpolate(word_map[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    up = up.clamp_min(0)
    return (up / up.sum().clamp_min(1e-12)).numpy()


def measure_word(word_map: torch.Tensor, own: np.ndarray, other: np.ndarray | None) -> tuple[float, bool | None, float]:
    """(concentration, own > other or None, IoU of the half-maximum region) of one word's map."""
    m = upsampled(word_map, own.shape[0])
    share = float(m[own].sum())
    concentration = share / (own.mean())
    own_over_other = None if other is None else share > float(m[other].sum())
    region = m > 0.5 * m.max()
    union = np.count_nonzero(region | own)
    return concentration, own_over_other, float(np.count_nonzero(region & own) / union) if union else 0.0


@torch.no_grad()
def diagnose(sd, prompts: list[str], seed: int = 0, steps: int = 50, guidance_scale: float = 5.0,
             batch: int = 8, progress: bool = True) -> dict:
    """Sample every prompt with an attention store and measure its word maps (see the module docstring).

    Returns {"words": [WordMap, ...], "shares": {size: {bos, words, eos, padding}}, "found": share of
    measured words whose object was painted with that word's attribute}."""
    from tqdm import tqdm

    records, shares, found, total = [], {}, 0, 0
    sizes = None
    for start in tqdm(range(0, len(prompts), batch), desc="attention", disable=not progress):
        chunk = prompts[start:start + batch]
        store = AttentionStore(len(chunk), cross_max_size=1.0, self_max_size=0)
        result = sd.text_to_image(chunk, guidance_scale=guidance_scale, steps=steps, seed=seed + start,
                                  editor=store, progress=False)
        if sizes is None:
            recorded = store.sizes("cross")
            sizes = sorted({recorded[0], min(recorded, key=lambda s: abs(s - 0.25))}, reverse=True)
        for b, caption in enumerate(chunk):
            image = result.images[b].permute(1, 2, 0).double().numpy()
            reading = read_scene(np.clip(image, 0, 1))
            named = parse_description(caption)["objects"]
            matched = match_objects(reading, named)
            tokens = word_tokens(caption)
            n_words = len(caption.split())
            for size in sizes:
                maps = store.aggregate("cross", size, prompt=b)  # (h, w, 77)
                for key, value in mass_shares(maps, n_words).items():
                    shares.setdefault(size, {}).setdefault(key, []).append(value)
                for obj, token, word, kind in tokens:
                    total += size == sizes[0]
                    m = matched[obj]
                    if m is None or m.attributes()[kind] != word:
                        continue  # the word's object is not there to be found
                    found += size == sizes[0]
                    other = None
                    if len(named) == 2 and matched[1 - obj] is not None:
                        other = matched[1 - obj].mask
                    c, o, iou = measure_word(maps[..., token], m.mask, other)
                    records.append(WordMap(start + b, word, kind, len(named), size, c, o, iou))
    return {"words": records, "shares": {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in shares.items()},
            "found": found / max(total, 1), "sizes": sizes}


def summary(result: dict) -> dict:
    """Per map size: mean concentration, share own > other (two-object scenes), mean IoU, words measured."""
    out = {}
    for size in result["sizes"]:
        rows = [r for r in result["words"] if r.size == size]
        pairs = [r.own_over_other for r in rows if r.own_over_other is not None]
        out[size] = {"concentration": float(np.mean([r.concentration for r in rows])) if rows else float("nan"),
                     "own_over_other": float(np.mean(pairs)) if pairs else float("nan"),
                     "iou": float(np.mean([r.iou for r in rows])) if rows else float("nan"),
                     "words": len(rows), **{f"share_{k}": v for k, v in result["shares"][size].items()}}
    return out
