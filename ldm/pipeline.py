"""The Stable Diffusion v1 text-to-image pipeline: prompt -> context, noise -> latents -> image.

A latent diffusion model (Rombach et al. 2022) runs the diffusion process on the VAE's latents
z = scale * E(x) instead of on pixels, and conditions the denoiser on the text through
cross-attention on tau(y), the CLIP text encoder's last hidden state (LDM Eq. 3):

    context = tau(y)                       (B, 77, D)      tokenizer + CLIP text encoder
    z_T ~ N(0, I)                          (B, 4, H/8, W/8) one randn of the whole batch
    for t in tau_N > ... > tau_1:          the DDIM sub-sequence (leading spacing, offset 1)
        eps = eps(z_t) + s (eps(z_t, y) - eps(z_t))        classifier-free guidance, Ho & Salimans Eq. 6
        z_t' = DDIM step (Song et al. Eq. 12), or a DDPM ancestral step (Ho et al. Eq. 11)
    x = D(z_0 / scale)                     (B, 3, H, W)    VAE decoder, [-1, 1] -> [0, 1]

Classifier-free guidance evaluates the U-Net once on the batch [uncond..., cond...] (unconditional
half first, as in diffusers and Prompt-to-Prompt), so an editor passed to the U-Net sees 2B items:
item i < B is prompt i's unconditional branch, item B + i its conditional one. ``guidance_scale``:

- s = 1 is the conditional model alone: one U-Net call on the B conditional items, no uncond;
- s > 1 (SD's default 7.5) extrapolates away from the unconditional prediction;
- s < 1 is allowed for sampling (s = 0 is the unconditional model), where diffusers silently
  switches guidance off for any s <= 1; DDIM inversion refuses it (see :meth:`StableDiffusion.invert`).

Seeds follow diffusers on the CPU: ``torch.Generator().manual_seed(seed)``, one ``randn`` of the
whole latent batch, then the sampler's step noise (DDPM, or DDIM with eta > 0) from the same
generator. So the same weights, prompts and seed give diffusers' image (tests/test_pipeline.py).

Sizes: the VAE divides H and W by f = 8 and the U-Net by 2^(levels - 1) more, so H and W must be
multiples of 64 for SD v1 (32 for the tiny test configs); diffusers' U-Net pads odd sizes, this
one does not.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from ddim.inversion import Trajectory, ddim_invert
from ddim.sampler import ddim_step, resolve_final_alpha_bar
from ddpm.checks import check_choice
from ddpm.guidance import classifier_free_guidance
from ddpm.reverse import ddpm_step, initial_noise, seeded_generator
from ddpm.schedule import NoiseSchedule, make_timesteps, timestep_pairs
from unet.editor import Editor
from unet.model import UNet

from .clip_text import CLIPTextModel
from .images import ImageLike, load_image, to_pil
from .tokenizer import PromptTokenizer
from .vae import AutoencoderKL

SAMPLERS = ("ddim", "ddpm")


class NonFiniteError(ValueError):
    """Sampling produced NaN or inf: the message names where, and the likely cause."""


def check_finite(x: torch.Tensor, where: str, cause: str) -> torch.Tensor:
    """``x`` unchanged if every value is finite; else a :class:`NonFiniteError` naming ``where`` and ``cause``."""
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{where}: NaN or inf values appeared; likely cause: {cause}")
    return x


def check_guidance_scale(guidance_scale: float) -> float:
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    return float(guidance_scale)


def check_sampler(sampler: str, eta: float) -> None:
    check_choice("sampler", sampler, SAMPLERS)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if sampler == "ddpm" and eta != 0:
        raise ValueError(f"eta={eta} applies to the DDIM sampler only; the DDPM sampler is DDIM's eta = 1")


# PyTorch runs a CPU convolution of batch 1 and at most this many input elements with its own
# im2col + GEMM kernel rather than oneDNN ("for some case, native is faster": the ``use_mkldnn``
# test in aten/src/ATen/native/Convolution.cpp). Any batch > 1 goes to oneDNN whatever its size.
NATIVE_CONV_MAX_ELEMENTS = 20480


def tiny_convs(unet: UNet, batch: int, height: int, width: int) -> bool:
    """Whether every convolution of a U-Net call on (batch, C, height, width) latents is under
    PyTorch's batch-1 cut-off: its largest input is at most batch x 2 max(width) x height x width
    (a skip concatenation holds at most two widths, and no feature map is larger than the latent).
    True for the toy model at 8x8 latents with guidance; False for SD v1 at any size."""
    return batch * 2 * max(unet.config.block_out_channels) * height * width <= NATIVE_CONV_MAX_ELEMENTS


@contextlib.contextmanager
def native_convs(enabled: bool) -> Iterator[None]:
    """Switch oneDNN (``torch.backends.mkldnn``) off for the block when ``enabled``; restore it after.

    Classifier-free guidance makes every U-Net call a batch of 2B, so PyTorch hands every 3x3
    convolution to oneDNN, whose fixed cost per call (measured at ~70-90 us on this project's
    2-core CPU) outweighs the work of the toy model's convs on 4x4 and 8x8 maps, where PyTorch's
    own kernel takes 20-90 us. With :func:`tiny_convs` deciding, the toy model's text_to_image
    runs ~10% faster; only speed and float rounding change. The switch is process-wide, not per
    thread: while the block runs, convolutions in other threads of the process skip oneDNN too.
    """
    before = torch.backends.mkldnn.enabled
    if enabled:
        torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@dataclass
class GenerationResult:
    """What :meth:`StableDiffusion.text_to_image` returns."""

    images: torch.Tensor  # (B, 3, H, W) float in [0, 1]
    latents: torch.Tensor  # (B, 4, H/8, W/8): the final z_0, before the VAE decoder

    def to_pil(self) -> list[Image.Image]:
        return to_pil(self.images)


class StableDiffusion:
    """The three networks, the tokenizer and the noise schedule of one model, and the loops over them."""

    def __init__(self, unet: UNet, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: PromptTokenizer,
                 schedule: NoiseSchedule, steps_offset: int = 1, image_size: int = 512,
                 spacing: str = "leading", device: torch.device | str = "cpu") -> None:
        u, v, c = unet.config, vae.config, text_encoder.config
        if u.in_channels != v.latent_channels or u.cross_attention_dim != c.hidden_size:
            raise ValueError(f"the parts do not fit: U-Net in_channels {u.in_channels} / cross_attention_dim "
                             f"{u.cross_attention_dim}, VAE latent_channels {v.latent_channels}, text hidden_size "
                             f"{c.hidden_size}; expected in_channels = latent_channels and cross_attention_dim = hidden_size")
        if tokenizer.vocab_size > c.vocab_size or tokenizer.eos_id != c.eos_token_id or tokenizer.bos_id != c.bos_token_id:
            raise ValueError(f"the tokenizer ({tokenizer.vocab_size} ids, bos {tokenizer.bos_id}, eos {tokenizer.eos_id}) "
                             f"does not fit the text encoder ({c.vocab_size} ids, bos {c.bos_token_id}, eos "
                             f"{c.eos_token_id}): they come from different models")
        self.device = torch.device(device)
        self.unet, self.vae = unet.to(self.device).eval(), vae.to(self.device).eval()
        self.text_encoder, self.tokenizer = text_encoder.to(self.device).eval(), tokenizer
        self.schedule, self.steps_offset, self.spacing = schedule, steps_offset, spacing
        self.final_alpha_bar = resolve_final_alpha_bar(schedule, None)  # SD v1: alpha_bar[0], not 1
        self.latent_factor = v.downsample_factor  # 8
        self.size_multiple = v.downsample_factor * u.downsample_factor  # 64 for SD v1, 32 for the tiny configs
        if image_size % self.size_multiple:
            raise ValueError(f"image_size {image_size} is not a multiple of {self.size_multiple}")
        self.image_size = image_size

    @classmethod
    def from_folder(cls, path: str | Path, device: torch.device | str = "cpu") -> "StableDiffusion":
        """A model folder written by ``python -m weights.convert`` (see :mod:`weights.model_folder`)."""
        from weights.model_folder import load_model_folder, manifest_image_size, read_manifest, schedule_from_settings

        data = read_manifest(path)
        schedule, steps_offset, spacing = schedule_from_settings(data["scheduler"])
        image_size = manifest_image_size(data, path)
        unet, vae, text_encoder, tokenizer = load_model_folder(path)
        return cls(unet, vae, text_encoder, tokenizer, schedule, steps_offset, image_size, spacing, device)

    # ------------------------------------------------------------------ pieces
    def timesteps(self, steps: int) -> torch.Tensor:
        """The descending timesteps a sampler of ``steps`` steps visits (981, 961, ..., 1 for SD v1 and 50)."""
        return make_timesteps(steps, self.schedule.num_train_timesteps, self.spacing, self.steps_offset)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """tau(y): the text encoder's last hidden state (B, 77, D). Over-long prompts are truncated
        to 75 tokens with a warning (from the tokenizer)."""
        ids = self.tokenizer(prompts).to(self.device)  # (B, 77)
        with torch.no_grad():
            return self.text_encoder(ids).last_hidden_state  # (B, 77, D)

    def _check_context(self, context: torch.Tensor, batch: int, name: str, allow_one: bool = False) -> None:
        D = self.unet.config.cross_attention_dim
        ok = isinstance(context, torch.Tensor) and context.ndim == 3 and context.shape[-1] == D
        if not ok or context.shape[0] not in ((batch, 1) if allow_one else (batch,)):
            got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"{name} must be ({batch}{' or 1' if allow_one else ''}, tokens, {D}), got {got}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        c, f = self.unet.config.in_channels, self.unet.config.downsample_factor
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != c:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be (B, {c}, h, w), got {got}")
        dtype = next(self.unet.parameters()).dtype
        if latents.dtype != dtype:
            raise ValueError(f"latents have dtype {latents.dtype}; the U-Net computes in {dtype}: pass "
                             f"latents.to({dtype})")
        if not torch.isfinite(latents).all():
            raise ValueError(f"latents hold {int((~torch.isfinite(latents)).sum())} NaN or inf values; "
                             f"expected finite numbers (z_T is usually standard normal noise)")
        if latents.shape[-2] % f or latents.shape[-1] % f:
            raise ValueError(f"latents of size {tuple(latents.shape[-2:])} do not divide by the U-Net's factor {f}")

    def predict_noise(self, latents: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor | None,
                      guidance_scale: float, editor: Editor | None = None,
                      extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The guided eps (B, 4, h, w) at timestep t: one U-Net call on [uncond..., cond...] (2B items),
        then Eq. 6; with ``guidance_scale == 1`` one call on the B conditional items, ``uncond`` unused.
        ``uncond`` may have batch 1 (one null-text embedding for every prompt).

        ``extra`` = (latents (E, 4, h, w), contexts (E, 77, D)) puts E more items *before* those in
        the same call; the editor sees them as items 0..E-1 and their predictions are dropped
        (Plug-and-Play's source branch, :meth:`unet.Editor.extra_items`).
        """
        s = check_guidance_scale(guidance_scale)
        B = latents.shape[0]
        if s == 1:
            x, context = latents, cond  # (B, 4, h, w), (B, 77, D)
        else:
            if uncond is None:
                raise ValueError(f"guidance_scale={s} needs the unconditional context uncond; got None")
            x = torch.cat([latents, latents])  # (2B, 4, h, w)
            context = torch.cat([uncond.expand(B, -1, -1), cond])  # (2B, 77, D): unconditional half first
        E = 0
        if extra is not None:
            extra_latents, extra_context = extra
            if extra_latents.shape[1:] != latents.shape[1:] or extra_context.shape[1:] != cond.shape[1:] or \
                    extra_latents.shape[0] != extra_context.shape[0]:
                raise ValueError(f"extra items {tuple(extra_latents.shape)}, {tuple(extra_context.shape)} do not fit "
                                 f"latents {tuple(latents.shape)} and contexts {tuple(cond.shape)}")
            E = extra_latents.shape[0]
            x, context = torch.cat([extra_latents, x]), torch.cat([extra_context, context])  # (E + U, ...)
        eps = self.unet(x, t, context, editor)[E:]  # (B or 2B, 4, h, w): the extra items' output dropped
        edited = ", or the editor's change (a re-weighting?) is too large" if editor else ""
        if s == 1:
            return check_finite(eps, f"the noise prediction at t={t}", "the weights or the context hold NaN/inf" + edited)
        eps_uncond, eps_cond = eps.chunk(2)  # (B, 4, h, w) each
        return check_finite(classifier_free_guidance(eps_uncond, eps_cond, s), f"the guided noise prediction at t={t}",
                            f"the guidance scale {s} is too large, the weights hold NaN/inf" + edited)

    def step(self, eps: torch.Tensor, latents: torch.Tensor, t: int, t_prev: int, sampler: str = "ddim",
             eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """One sampler update z_t -> z_{t_prev} from the noise prediction ``eps``: DDIM (Song et al.
        Eq. 12; eta = 0 is deterministic) or the DDPM ancestral step (Ho et al. Eq. 11, the respaced
        posterior of the jump t -> t_prev, sigma^2 = beta_tilde). Differentiable in ``eps``
        (null-text inversion's loss goes through it)."""
        if sampler == "ddim":
            return ddim_step(self.schedule, eps, latents, t, t_prev, eta=eta, final_alpha_bar=self.final_alpha_bar,
                             generator=generator).sample
        return ddpm_step(self.schedule, eps, latents, t, t_prev, generator=generator).sample

    # ------------------------------------------------------------------ loops
    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None = None, *,
                steps: int = 50, guidance_scale: float = 7.5, sampler: str = "ddim", eta: float = 0.0,
                generator: torch.Generator | None = None, editor: Editor | None = None, progress: bool = True,
                start_step: int = 0, uncond_per_step: Sequence[torch.Tensor] | None = None,
                desc: str | None = None) -> torch.Tensor:
        """The sampling loop: from ``latents`` (at ``timesteps(steps)[start_step]``) to z_0 (B, 4, h, w).

        Every method of the library samples through this loop: text-to-image, image-to-image and
        SDEdit, Prompt-to-Prompt, null-text inversion (its optimisation and its reconstruction) and
        Plug-and-Play. What differs between them is the editor (:class:`unet.Editor`), called at
        fixed points of each step i at timestep t:

            editor.begin_step(i, t)
            u   = editor.unconditional(i, t, z_t, u)     the unconditional context of this step
            extra = editor.extra_items(i, t)             more U-Net items before the guidance pair
            eps = guided noise prediction (one U-Net call; the editor's hooks run inside it)
            z_t' = sampler step
            z_t' = editor.end_step(z_t', i, t)           e.g. local blending

        ``start_step > 0`` skips the first steps (image-to-image, SDEdit: start from a noised image).
        ``uncond_per_step``, one context per step (indexed by the step number i, so ``steps`` of
        them; batch B or 1), replaces ``uncond`` step by step: null-text inversion's optimised
        embeddings. Step noise (DDPM, DDIM with eta > 0) comes from ``generator``. ``desc`` names
        the progress bar (default: the sampler).
        """
        timesteps = self.timesteps(steps)
        check_sampler(sampler, eta)
        s = check_guidance_scale(guidance_scale)
        if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < steps:
            raise ValueError(f"start_step must be an int in [0, {steps - 1}] for steps={steps}, got {start_step!r}")
        self._check_latents(latents)
        B = latents.shape[0]
        self._check_context(cond, B, "cond")
        if uncond is not None and uncond_per_step is not None:
            raise ValueError("give uncond or uncond_per_step, not both")
        if uncond_per_step is not None:
            if len(uncond_per_step) != steps:
                raise ValueError(f"uncond_per_step has {len(uncond_per_step)} entries, expected one per step ({steps})")
            for i, u in enumerate(uncond_per_step):
                self._check_context(u, B, f"uncond_per_step[{i}]", allow_one=True)
        elif uncond is not None:
            self._check_context(uncond, B, "uncond", allow_one=True)
        elif s != 1:
            raise ValueError(f"guidance_scale={s} needs the unconditional context: pass uncond (or uncond_per_step)")
        if editor is not None and not isinstance(editor, Editor):
            raise TypeError(f"editor must be an unet.Editor or None, got {type(editor).__name__}")

        latents = latents.to(self.device)
        pairs = timestep_pairs(timesteps)  # (t, t_prev) of each step
        for i in tqdm(range(start_step, steps), desc=desc or sampler.upper(), disable=not progress):
            t, t_prev = pairs[i]
            u = uncond_per_step[i] if uncond_per_step is not None else uncond
            extra = None
            if editor is not None:
                editor.begin_step(i, t)
                extra = editor.extra_items(i, t)  # Plug-and-Play's source branch
            # The CPU convolution switch is decided here, once per step, from the step's U-Net batch.
            unet_batch = (B if s == 1 else 2 * B) + (0 if extra is None else extra[0].shape[0])
            with native_convs(tiny_convs(self.unet, unet_batch, *latents.shape[-2:])):
                if editor is not None:
                    u = editor.unconditional(i, t, latents, u)  # null-text inversion optimises u_t here
                eps = self.predict_noise(latents, t, cond, u, s, editor, extra)  # (B, 4, h, w)
            latents = self.step(eps, latents, t, t_prev, sampler, eta, generator)
            check_finite(latents, f"the latents after step {i} (t={t})",
                         f"eta={eta} or the guidance scale {s} is too large, or an editor's change diverged")
            if editor is not None:
                new = editor.end_step(latents, i, t)
                if not isinstance(new, torch.Tensor) or new.shape != latents.shape:
                    got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                    raise ValueError(f"editor.end_step returned {got} at step {i}, expected {tuple(latents.shape)}")
                latents = new
        return latents

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, cond: torch.Tensor, *, steps: int = 50, guidance_scale: float = 1.0,
               uncond: torch.Tensor | None = None, progress: bool = True) -> Trajectory:
        """DDIM inversion of image latents z_0 under the prompt context ``cond``: the loop of
        :func:`ddim.inversion.ddim_invert` with this model's guided noise prediction.

        Returns the :class:`ddim.inversion.Trajectory` [z_0, z_{tau_1}, ..., z_{tau_N}]: ``result[-1]``
        (or ``result.at(tau_N)``) is the z_T to hand to :meth:`denoise`
        with the same ``steps``, and ``result[-1 - i]`` is where step i of that sampling should land.
        Null-text inversion and Plug-and-Play invert with s = 1 (the conditional model alone), the
        default. s > 1 needs ``uncond``. s < 1 is an error: it would extrapolate *toward* the
        unconditional model, away from the prompt, which no inversion method here wants, and the
        trajectory it produces is not one that guided sampling retraces.
        """
        s = check_guidance_scale(guidance_scale)
        if s < 1:
            raise ValueError(f"guidance_scale={s} < 1 is not allowed for inversion: it extrapolates toward the "
                             f"unconditional model; invert with 1 (the default) or more")
        self.timesteps(steps)  # checks steps
        self._check_latents(latents)
        self._check_context(cond, latents.shape[0], "cond")
        if s != 1:
            if uncond is None:
                raise ValueError(f"guidance_scale={s} needs the unconditional context uncond; got None")
            self._check_context(uncond, latents.shape[0], "uncond", allow_one=True)
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # t: (B,) of one timestep, as ddim_invert hands it
            return self.predict_noise(x, int(t[0]), cond, uncond, s)  # eps(z_{t_prev}, t), (B, 4, h, w)

        return ddim_invert(model, latents.to(self.device), self.schedule, steps, spacing=self.spacing,
                           steps_offset=self.steps_offset, final_alpha_bar=self.final_alpha_bar, progress=progress)

    # ------------------------------------------------------------------ text to image
    def _latent_shape(self, batch: int, height: int | None, width: int | None,
                      latents: torch.Tensor | None) -> tuple[int, int, int, int]:
        f, m = self.latent_factor, self.size_multiple
        if latents is not None:
            self._check_latents(latents)
            height = latents.shape[-2] * f if height is None else height
            width = latents.shape[-1] * f if width is None else width
        height = self.image_size if height is None else height
        width = self.image_size if width is None else width
        from weights.model_folder import MAX_IMAGE_SIDE

        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < m or value % m:
                raise ValueError(f"{name}={value!r} must be a positive multiple of {m} (the VAE divides sizes by "
                                 f"{f}, the U-Net by {m // f} more)")
            if value > MAX_IMAGE_SIDE:
                raise ValueError(f"{name}={value} is larger than {MAX_IMAGE_SIDE}, the largest side this pipeline "
                                 f"samples (16 times SD's 512 x 512 pixels)")
        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape} for {batch} prompts "
                             f"at {height}x{width}")
        return shape

    @torch.no_grad()
    def text_to_image(self, prompts: Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                      guidance_scale: float = 7.5, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
                      seed: int | None = None, generator: torch.Generator | None = None,
                      latents: torch.Tensor | None = None, height: int | None = None, width: int | None = None,
                      editor: Editor | None = None, progress: bool = True) -> GenerationResult:
        """Images (B, 3, H, W) in [0, 1] for B prompts; see the module docstring for the maths.

        ``negative_prompt`` (one string for all, or one per prompt) replaces "" as the unconditional
        text (unused when guidance_scale == 1). The start z_T is ``latents`` if given, else one
        ``randn`` of (B, 4, H/8, W/8) from ``generator`` or ``torch.Generator().manual_seed(seed)``.
        ``height``/``width`` default to the model's ``image_size``.
        """
        PromptTokenizer._check_prompts(prompts)
        B = len(prompts)
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives = [negative_prompt or ""] * B
        else:
            negatives = list(negative_prompt)
            if len(negatives) != B:
                raise ValueError(f"negative_prompt has {len(negatives)} entries, expected one per prompt ({B}) or one str")
            PromptTokenizer._check_prompts(negatives)
        # Check everything denoise() would, before the text encoder and the first randn run.
        self.timesteps(steps)
        check_sampler(sampler, eta)
        s = check_guidance_scale(guidance_scale)
        generator = seeded_generator(seed, generator)
        shape = self._latent_shape(B, height, width, latents)

        # With no editor, nothing made from here on outlives the call but the result, so it runs
        # under inference_mode: no autograd bookkeeping at all, ~7% faster than no_grad on the toy
        # model. An editor keeps tensors of its own, and inference tensors cannot be updated in
        # place outside inference_mode (an editor reused in a later denoise() would fail), so
        # with one it stays no_grad, as does every other entry point. (Not inference_mode(editor is
        # None): inference_mode(False) switches gradients back *on*.)
        with torch.inference_mode() if editor is None else torch.no_grad():
            cond = self.encode_prompts(list(prompts))  # (B, 77, D)
            uncond = self.encode_prompts(negatives) if s != 1 else None  # (B, 77, D)
            if latents is None:
                latents = initial_noise(shape, None, generator, torch.float32, self.device)  # (B, 4, h, w)
            z0 = self.denoise(latents, cond, uncond, steps=steps, guidance_scale=s, sampler=sampler, eta=eta,
                              generator=generator, editor=editor, progress=progress)
            images = self.decode(z0)  # (B, 3, H, W)
        # Cloned outside inference_mode, the results are ordinary tensors again (a cheap copy).
        return GenerationResult(images.clone(), z0.clone())

    # ------------------------------------------------------------------ images <-> latents
    @torch.no_grad()
    def encode_image(self, image: ImageLike | Sequence[ImageLike], height: int | None = None,
                     width: int | None = None) -> torch.Tensor:
        """Image(s) -> z_0 = scale * mean of q(z | x), (B, 4, H/8, W/8). Any input of
        :func:`ldm.images.load_image`; sizes go to a multiple of ``size_multiple`` (with a warning).
        A list of images must come out at one size (pass height and width)."""
        images = image if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("encode_image needs at least one image, got an empty list")
        x = [load_image(im, height, width, multiple=self.size_multiple) for im in images]  # each (1, 3, H, W)
        sizes = sorted({tuple(im.shape[-2:]) for im in x})
        if len(sizes) > 1:
            raise ValueError(f"the images come out at different sizes {sizes}; pass height and width")
        x = torch.cat(x).to(self.device)  # (B, 3, H, W) in [0, 1]
        return self.vae.encode_to_latents(2 * x - 1)  # (B, 4, H/8, W/8)

    def image_latents(self, image_or_latents: ImageLike | torch.Tensor) -> torch.Tensor:
        """One image's z_0 (1, 4, h, w), what an inversion starts from: a latent tensor as it is,
        anything else through :meth:`encode_image`.

        A 4-D tensor with the U-Net's input channels (4) is read as latents; images are 3-channel.
        One image only: an inversion is one trajectory. Returns a copy (an inversion keeps it)."""
        c = self.unet.config.in_channels
        x = image_or_latents
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == c:
            latents = x
        else:
            if isinstance(x, (list, tuple)) and len(x) != 1:
                raise ValueError(f"an inversion takes one image, got a list of {len(x)}")
            if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[0] != 1:
                raise ValueError(f"an inversion takes one image, got a batch of shape {tuple(x.shape)}")
            latents = self.encode_image(x)  # (1, 4, h, w)
        if latents.shape[0] != 1:
            raise ValueError(f"an inversion takes one image latent (1, {c}, h, w), got a batch of shape "
                             f"{tuple(latents.shape)}")
        return latents.detach().to(self.device).clone()  # (1, 4, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """z_0 (B, 4, h, w) -> images (B, 3, 8h, 8w) in [0, 1]."""
        x = self.vae.decode_latents(latents.to(self.device))  # (B, 3, 8h, 8w), roughly [-1, 1]
        check_finite(x, "the decoded image", "the VAE's weights or scaling_factor, or latents far out of range")
        return (x / 2 + 0.5).clamp(0, 1)
