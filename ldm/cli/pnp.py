"""Plug-and-Play from the command line.

    python -m ldm.cli.pnp --weights weights/toy --image red_circle.png --prompt "a blue circle" \\
        --negative "" --guidance 5 --out blue_circle.png --figure side.png

The image is translated to ``--prompt`` by :mod:`editing.plug_and_play`: it is inverted (VAE
posterior mean, DDIM inversion with the empty prompt in ``--inversion-steps`` steps), then sampled
in ``--steps`` steps with the target prompt while the guidance image's ResBlock features are
injected for the first ``--feature-injection`` fraction of the steps (0.8) and its decoder
self-attention queries and keys for the first ``--attention-injection`` fraction (0.5).
``--out`` gets the translated image alone. ``--figure`` also writes one captioned row: the input
image, the Plug-and-Play translation, then SDEdit (the baseline: noise the image to a strength,
denoise with the same prompt, negative prompt and guidance) at each of ``--strengths``.

Defaults are SD v1's and the official translation's: 50 steps, guidance 7.5 and the negative
prompt "ugly, blurry, black, low res, unrealistic". That negative prompt is written in English
words a CLIP tokenizer reads; a model with a word vocabulary, as the toy model, cannot read it:
pass ``--negative ""`` (the empty prompt, as text-to-image uses) and ``--guidance 5``
(``toyworld.model.TOY_GUIDANCE_SCALE``) with ``weights/toy``. The command says so if you forget.

The image is read by :func:`ldm.images.load_image`: grey and palette images become RGB, transparent
ones are composited onto white, and an image that is not the model's square ``image_size`` is
centre-cropped to a square and resized to it, with a warning that names both sizes (the official
code resizes to 512 x 512 too). ``--seed`` seeds SDEdit's noise only: Plug-and-Play itself is
deterministic, it starts from the image's inverted noise z_T.

Bad arguments (an unreadable image, a fraction outside [0, 1], an empty prompt, a word the
tokenizer does not know, inversion steps that miss the sampling timesteps) stop the command before
the networks are loaded, with exit status 2. Each image is written to a temporary file and renamed,
and the command prints where it wrote.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from editing.plug_and_play import DEFAULT_NEGATIVE

from .common import (captioned_grid, device_name, finite_float, fraction, load_model, output_problem, positive_int,
                     save_atomically, seed_value)

DEFAULT_STRENGTHS = (0.3, 0.5, 0.7)  # SDEdit in --figure: little change, then more freedom and less layout


def strength(text: str) -> float:
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected an SDEdit strength in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ldm.cli.pnp", description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, type=Path, help="a model folder written by python -m weights.convert")
    p.add_argument("--image", required=True, type=Path, help="the guidance image to translate")
    p.add_argument("--prompt", required=True, help="the target prompt: what the image should become")
    p.add_argument("--negative", default=DEFAULT_NEGATIVE,
                   help=f'negative prompt (default "{DEFAULT_NEGATIVE}", the official one; a word-vocabulary '
                        f'model such as the toy needs --negative "")')
    p.add_argument("--feature-injection", type=fraction, default=0.8,
                   help="fraction of the steps that inject the ResBlock features (default 0.8)")
    p.add_argument("--attention-injection", type=fraction, default=0.5,
                   help="fraction of the steps that inject self-attention queries and keys (default 0.5)")
    p.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    p.add_argument("--inversion-steps", type=positive_int,
                   help="DDIM inversion steps (default: --steps); their timesteps must hold the sampling ones")
    p.add_argument("--guidance", type=finite_float, default=7.5,
                   help="classifier-free guidance scale (default 7.5, SD v1's; the toy model's is 5)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of SDEdit's noise in --figure (default 0)")
    p.add_argument("--out", type=Path, default=Path("pnp.png"), help="the translated image (default pnp.png)")
    p.add_argument("--figure", type=Path, help="also write input | Plug-and-Play | SDEdit side by side here")
    p.add_argument("--strengths", type=strength, nargs="+", metavar="S",
                   help=f"SDEdit strengths in --figure (default {' '.join(map(str, DEFAULT_STRENGTHS))})")
    p.add_argument("--device", type=device_name, default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# ---------------------------------------------------------------------------------- checks
def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything that needs no file but the ones named; errors exit with status 2."""
    for flag, path in (("--out", args.out), ("--figure", args.figure)):
        if path is not None and (problem := output_problem(path)):
            parser.error(f"{flag} {problem}")
    if not args.prompt.strip():
        parser.error(f"--prompt must describe the translation, got {args.prompt!r}")
    if args.strengths is not None and args.figure is None:
        parser.error("--strengths applies to --figure only")
    args.strengths = list(DEFAULT_STRENGTHS) if args.strengths is None else args.strengths
    if args.figure is not None:
        idle = [s for s in args.strengths if int(s * args.steps) == 0]
        if idle:
            parser.error(f"--strengths {idle} leave SDEdit no step to run out of --steps {args.steps} "
                         f"(it runs int(strength x steps) of them); raise them or the steps")
    if not args.weights.is_dir():
        parser.error(f"--weights {args.weights} is not a folder")
    from ldm.images import to_rgb_tensor

    try:
        to_rgb_tensor(args.image)  # read and converted to RGB as the inversion will, the size left for later
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"--image: {e}")


def check_model(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: dict, tokenizer) -> None:
    """The prompts against the tokenizer and the inversion steps against the scheduler, from the
    model folder's manifest and tokenizer alone (no network loaded yet)."""
    from ddpm.schedule import make_timesteps
    from weights.model_folder import schedule_from_settings

    for flag, text in (("--prompt", args.prompt), ("--negative", args.negative)):
        try:
            tokenizer([text])
        except ValueError as e:
            hint = ' (a word-vocabulary model such as the toy reads no English negative prompt: pass --negative "")' \
                if flag == "--negative" and text == DEFAULT_NEGATIVE else ""
            parser.error(f"{flag}: {e}{hint}")
    schedule, offset, spacing = schedule_from_settings(settings)
    T = schedule.num_train_timesteps
    inversion_steps = args.steps if args.inversion_steps is None else args.inversion_steps
    try:
        sampling = set(make_timesteps(args.steps, T, spacing, offset).tolist())
        missing = sorted(sampling - set(make_timesteps(inversion_steps, T, spacing, offset).tolist()))
    except ValueError as e:
        parser.error(f"--steps {args.steps}, --inversion-steps {inversion_steps}: {e}")
    if missing:
        parser.error(f"--inversion-steps {inversion_steps} misses the sampling timesteps {missing[:5]}"
                     f"{'...' if len(missing) > 5 else ''} of --steps {args.steps}; use {args.steps} (the default) or "
                     f"{T - 1} (every timestep 1..{T - 1} with SD's leading spacing and offset 1)")


# ---------------------------------------------------------------------------------- the command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)

    from ldm.images import load_image, to_pil

    from editing.plug_and_play import invert_guidance_image, plug_and_play, sdedit

    sd = load_model(args.weights, args.device,
                    lambda manifest, tokenizer: check_model(parser, args, manifest["scheduler"], tokenizer))
    if sd is None:
        return 2

    try:
        progress = not args.quiet
        image = load_image(args.image, sd.image_size, sd.image_size, multiple=sd.size_multiple)  # (1, 3, H, W)
        inversion = invert_guidance_image(sd, image, steps=args.steps, inversion_steps=args.inversion_steps,
                                          progress=progress)
        z = plug_and_play(sd, inversion, args.prompt, negative_prompt=args.negative, guidance_scale=args.guidance,
                          feature_injection=args.feature_injection, attention_injection=args.attention_injection,
                          progress=progress)  # (1, 4, h, w)
        translated = to_pil(sd.decode(z))[0]
        save_atomically(translated, args.out)
        print(f"wrote {args.out} (Plug-and-Play translation of {args.image} to {args.prompt!r})")

        if args.figure:
            panels, captions = [to_pil(image)[0], translated], ["input image", f"Plug-and-Play: {args.prompt}"]
            for s in args.strengths:
                z = sdedit(sd, inversion.z0, args.prompt, strength=s, steps=args.steps, guidance_scale=args.guidance,
                           negative_prompt=args.negative, seed=args.seed, progress=progress)
                panels.append(to_pil(sd.decode(z))[0])
                captions.append(f"SDEdit {s:g}")
            save_atomically(captioned_grid(panels, captions), args.figure)
            print(f"wrote {args.figure} ({len(panels)} panels, left to right: {captions})")
    except ValueError as e:  # a bad image, a diverging edit (NonFiniteError): a message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the outputs: a full disk, a permission changed while computing
        print(f"error: could not write the output: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
