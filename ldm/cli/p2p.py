"""Prompt-to-Prompt from the command line.

    python -m ldm.cli.p2p --weights weights/toy --prompts "a big red circle" "a big blue circle" \\
        --guidance 5 --seed 0 --steps 50 --out edit.png

The first of ``--prompts`` is the source, the rest are its edits (:mod:`editing.prompt_to_prompt`).
``--out`` gets one row of panels, each captioned with its prompt: the source, then the targets.
``--mode`` picks the edit: ``replace`` (word swap, prompts of the same number of words), ``refine``
(words added), or ``reweight`` (no swap: only the ``--reweight WORD=SCALE`` scales, which the other
two modes also accept). ``--blend WORD ...`` turns on local blending around those words.

When the injections run, as fractions of the steps: ``--cross-steps 0.8`` (the first 80%),
``0.2,0.8`` (from 20% to 80%) or per word, ``default=0.8,circle=0.4`` or ``circle=0.1:0.5``;
``--self-steps`` takes a fraction or a pair; ``--self-size`` the largest self-attention map
injected, as a fraction of the latent side (0.25: SD's 16x16 of 64x64). These flags and the
``--blend-*`` ones are the fields of :class:`editing.prompt_to_prompt.Injection` and
:class:`~editing.prompt_to_prompt.LocalBlend`, read from them: the defaults and help are theirs.

A real image: ``--image photo.png`` with the source prompt describing it. The image is inverted
(``--inversion null-text``, the default, or ``negative-prompt``; :mod:`editing.null_text`) at the
same steps and guidance, and the row starts with the input image, then its reconstruction under
the source prompt, then the edits. The seed plays no part (the start is the inverted z_T).

The guidance scale defaults to 7.5, SD v1's, as in ``python -m ldm.cli.generate`` and the library:
the model folder does not say what a model samples best at. The toy model was tuned at 5
(``toyworld.model.TOY_GUIDANCE_SCALE``): pass ``--guidance 5`` with ``weights/toy``.

``--maps maps.png`` also writes the cross-attention maps every prompt used (a target's are the
edited maps it was given while the injection was on), one row of words each
(:func:`editing.attention_maps.token_heatmaps`). Bad arguments (a word that is not in the prompts,
a word swap between prompts of different lengths, ...) stop the command before the networks are
loaded, with exit status 2. Each figure is written to a temporary file and renamed, and the
command prints where it wrote.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from editing.prompt_to_prompt import Injection, LocalBlend, Refinement, Reweight, WordSwap

from .common import (captioned_grid, device_name, finite_float, fraction, load_model, output_problem, positive_int,
                     save_atomically, seed_value, stack_figures)

MODES = ("replace", "refine", "reweight")
INVERSIONS = ("null-text", "negative-prompt")


# ---------------------------------------------------------------------------------- argument types
def window(text: str, sep: str = ",") -> float | tuple[float, float]:
    """"F" -> F (the first F of the steps); "A<sep>B" -> (A, B) with A <= B."""
    parts = text.split(sep)
    if len(parts) == 1:
        return fraction(text)
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected a fraction F or a pair START{sep}END, got {text!r}")
    start, end = fraction(parts[0]), fraction(parts[1])
    if start > end:
        raise argparse.ArgumentTypeError(f"expected START <= END, got {text!r}")
    return start, end


def cross_window(text: str) -> float | tuple[float, float] | dict[str, float | tuple[float, float]]:
    """A :func:`window` for every token, or per word: "default=0.8,circle=0.4" or "circle=0.1:0.5"."""
    if "=" not in text:
        return window(text)
    windows: dict[str, float | tuple[float, float]] = {}
    for item in text.split(","):
        word, eq, value = item.partition("=")
        if not eq or not word or word in windows:
            raise argparse.ArgumentTypeError(f"expected WORD=F or WORD=START:END items, each word once, separated "
                                             f"by commas (e.g. default=0.8,circle=0.4), got {text!r}")
        windows[word] = window(value, sep=":")
    return windows


def size_fraction(text: str) -> float:
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction of the latent side in (0, 1], got {text}")
    return value


def threshold(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a threshold in [0, 1), got {text}")
    return value


def word_scale(text: str) -> tuple[str, float]:
    """"WORD=SCALE" -> (WORD, SCALE)."""
    word, eq, scale = text.partition("=")
    if not eq or not word:
        raise argparse.ArgumentTypeError(f"expected WORD=NUMBER, got {text!r}")
    try:
        return word, finite_float(scale)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected WORD=NUMBER, got {text!r}") from None


# How each kind of field (``option(..., kind, ...)`` in editing/prompt_to_prompt.py) is read.
KINDS = {"cross-window": cross_window, "window": window, "size": size_fraction, "fraction": fraction,
         "threshold": threshold}
METAVARS = {"cross-window": "WINDOW", "window": "F|START,END", "size": "FRACTION", "fraction": "FRACTION",
            "threshold": "FRACTION"}


def add_options(parser: argparse.ArgumentParser, options: type) -> None:
    """A flag for every field of the options class ``options``, with its help and default; a flag
    left out is None, so the class's own default applies."""
    for f in fields(options):
        flag, kind, text = f.metadata["flag"], f.metadata["kind"], f.metadata["help"]
        dest = f"{options.__name__}.{f.name}"
        if kind == "words":
            parser.add_argument(flag, dest=dest, nargs="+", metavar="WORD", help=text)
        else:
            default = "" if f.default is MISSING or f.default is None else f" (default {f.default:g})"
            parser.add_argument(flag, dest=dest, type=KINDS[kind], metavar=METAVARS[kind], help=text + default)


def given_options(args: argparse.Namespace, options: type) -> dict:
    """The fields of ``options`` the command line set, {name: value}."""
    values = {f.name: getattr(args, f"{options.__name__}.{f.name}") for f in fields(options)}
    return {name: value for name, value in values.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm.cli.p2p", description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="a model folder written by python -m weights.convert")
    p.add_argument("--prompts", required=True, nargs="+", metavar="PROMPT", help="the source, then one or more targets")
    p.add_argument("--mode", choices=MODES, default="replace", help="default replace")
    p.add_argument("--reweight", nargs="+", type=word_scale, metavar="WORD=SCALE",
                   help="scale these words' attention in the targets (required by --mode reweight)")
    for options in (Injection, LocalBlend):
        add_options(p, options)
    p.add_argument("--seed", type=seed_value, help="seed of the starting noise (default 0; not with --image)")
    p.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    p.add_argument("--guidance", type=finite_float, default=7.5,
                   help="classifier-free guidance scale (default 7.5, SD v1's; the toy model's is 5)")
    p.add_argument("--image", type=Path, help="a real image to edit; the source prompt describes it")
    p.add_argument("--inversion", choices=INVERSIONS, help="how --image is inverted (default null-text)")
    p.add_argument("--out", type=Path, default=Path("p2p.png"), help="the grid to write (default p2p.png)")
    p.add_argument("--maps", type=Path,
                   help="also write the cross-attention maps each prompt used (the targets' injected ones) here")
    p.add_argument("--device", type=device_name, default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# ---------------------------------------------------------------------------------- figures
# ---------------------------------------------------------------------------------- the command
def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything that needs no file but the ones named; errors exit with status 2."""
    for flag, path in (("--out", args.out), ("--maps", args.maps)):
        if path is not None and (problem := output_problem(path)):
            parser.error(f"{flag} {problem}")
    if len(args.prompts) < 2:
        parser.error(f"--prompts needs a source and at least one target prompt, got {len(args.prompts)}: {args.prompts}")
    if args.mode == "reweight" and not args.reweight:
        parser.error("--mode reweight needs --reweight WORD=SCALE [WORD=SCALE ...]")
    if args.reweight:
        words = [w.lower() for w, _ in args.reweight]  # prompts are lowercased: RED is red
        repeated = sorted({w for w in words if words.count(w) > 1})
        if repeated:
            parser.error(f"--reweight names {repeated} more than once")
    blend = given_options(args, LocalBlend)
    if blend and "words" not in blend:
        flags = [f.metadata["flag"] for f in fields(LocalBlend) if f.name in blend]
        parser.error(f"{' '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} with --blend WORD ... only")
    try:
        edit_options(args)  # the options objects check their own values
    except ValueError as e:
        parser.error(str(e))
    if args.image is None and args.inversion is not None:
        parser.error("--inversion applies to --image only")
    if args.image is not None and args.seed is not None:
        parser.error("--seed does not apply with --image: the edit starts from the image's inverted noise")
    if args.image is not None and args.guidance < 1:
        parser.error(f"--guidance {args.guidance} < 1 cannot invert --image (1 is the conditional model alone)")
    if not args.weights.is_dir():
        parser.error(f"--weights {args.weights} is not a folder")
    if args.image is not None:
        from ldm.images import to_rgb_tensor

        try:
            to_rgb_tensor(args.image)  # read and converted to RGB as sampling will, the size left for later
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--image: {e}")


def edit_options(args: argparse.Namespace) -> dict:
    """The edit, injection and blend of :func:`editing.prompt_to_prompt.prompt_to_prompt` the flags set."""
    base = {"replace": WordSwap(), "refine": Refinement(), "reweight": None}[args.mode]
    edit = Reweight(dict(args.reweight), on=base) if args.reweight else base
    blend = given_options(args, LocalBlend)
    return dict(edit=edit, injection=Injection(**given_options(args, Injection)),
                blend=LocalBlend(**blend) if "words" in blend else None)


def check_prompts(parser: argparse.ArgumentParser, args: argparse.Namespace, tokenizer) -> None:
    """The prompts and words against the tokenizer, before any network is loaded: the editor is built
    without U-Net sites (only local blending's resolution needs them), the blend words checked apart."""
    from editing.prompt_to_prompt import PromptToPrompt, word_alphas

    options = edit_options(args)
    blend = options.pop("blend")
    try:
        PromptToPrompt(args.prompts, tokenizer, (), args.steps, **options)
        if blend is not None:
            word_alphas(tokenizer, args.prompts, blend.words)
    except ValueError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)

    from ldm.images import load_image, to_pil

    from editing.attention_store import AttentionStore
    from editing.prompt_to_prompt import prompt_to_prompt

    sd = load_model(args.weights, args.device, lambda manifest, tokenizer: check_prompts(parser, args, tokenizer))
    if sd is None:
        return 2

    progress = not args.quiet
    store = AttentionStore(len(args.prompts), self_max_size=0) if args.maps else None
    panels, captions = [], list(args.prompts)
    try:
        inversion = None
        if args.image is not None:
            from editing.null_text import negative_prompt_inversion, null_text_inversion

            image = load_image(args.image, sd.image_size, sd.image_size, multiple=sd.size_multiple)  # (1, 3, H, W)
            invert = negative_prompt_inversion if args.inversion == "negative-prompt" else null_text_inversion
            inversion = invert(sd, image, args.prompts[0], steps=args.steps, guidance_scale=args.guidance,
                               progress=progress)
            panels, captions = to_pil(image), ["input image", *captions]
        result = prompt_to_prompt(sd, args.prompts, **edit_options(args), store=store, guidance_scale=args.guidance,
                                  steps=args.steps, seed=None if inversion else (0 if args.seed is None else args.seed),
                                  inversion=inversion, progress=progress)
    except ValueError as e:
        parser.error(str(e))
    panels += to_pil(result.images)
    try:
        save_atomically(captioned_grid(panels, captions), args.out)
        print(f"wrote {args.out} ({len(panels)} panels, left to right: {captions})")
        if args.maps:
            from editing.attention_maps import token_heatmaps

            figures = [token_heatmaps(store, sd.tokenizer, prompt, b, image=result.images[b])
                       for b, prompt in enumerate(args.prompts)]
            save_atomically(stack_figures(figures), args.maps)
            print(f"wrote {args.maps} (cross-attention maps of each prompt's words, top to bottom: {args.prompts})")
    except OSError as e:  # a full disk, a permission changed while computing
        print(f"error: could not write the output: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
