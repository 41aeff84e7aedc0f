"""Inverting a real image for guided editing: null-text inversion and negative-prompt inversion.

To edit a real image with a text-to-image model (Prompt-to-Prompt, Plug-and-Play), one first needs
a starting noise z_T and a sampling trajectory that lead back to the image. DDIM inversion
(ddim/inversion.py) gives z_T, but it runs the ODE with the *conditional* model alone
(guidance s = 1); editing samples with classifier-free guidance (s = 7.5), and every guided step
leaves the inverted path a little, so the reconstruction drifts away from the image:

    eps_tilde(z_t, t, C, u) = eps(z_t, t, u) + s (eps(z_t, t, C) - eps(z_t, t, u))    Ho & Salimans Eq. 6

with C the prompt's context and u the "null text", the empty prompt's context.

Null-text inversion (Mokady et al. 2023, "Null-text Inversion for Editing Real Images using
Guided Diffusion Models") keeps the network and C fixed and tunes u, one embedding u_t per step:

1. Pivotal inversion (section 3.1): DDIM inversion with s = 1 under the prompt gives the pivots
   z*_0 (the image), z*_{tau_1}, ..., z*_T. Sampling starts at z_T = z*_T.
2. Null-text optimisation (section 3.2, Algorithm 1): for each sampling step t -> t' in turn,
   starting from the latent z_t the guided sampler has actually reached,

       min over u_t of  || z*_{t'} - z_{t'}(z_t, t, C, u_t) ||^2

   where z_{t'}(z_t, t, C, u_t) is one DDIM step (Song et al. Eq. 12, eta 0) with eps_tilde.
   10 Adam iterations on u_t, initialised at the previous step's optimum (the first at the empty
   prompt's embedding), learning rate 0.01 (1 - i / 100) at step i of 50, and an early stop once
   the loss falls under epsilon + 2e-5 i (epsilon = 1e-5). Then z advances with a full guided
   step using u_t, and the next step starts there.

Editing then samples from z*_T with ``uncond_per_step = [u_{tau_N}, ..., u_{tau_1}]``
(``StableDiffusion.denoise``), which retraces the optimised path for the source prompt.

Negative-prompt inversion (Miyake et al. 2023, "Negative-prompt Inversion: Fast Image Inversion
for Editing with Text-guided Diffusion Models", section 3) observes that the optimum is close
to C itself and sets u_t = C with no optimisation at all. With u = C Eq. 6 collapses to
eps(z_t, t, C) for every s: sampling *is* the s = 1 DDIM path that the inversion ran backwards
(tested). Inverting costs the DDIM inversion alone, one U-Net call per step, where null-text
inversion adds up to 10 forward and backward passes per step.

The behaviour follows the official implementation (google/prompt-to-prompt,
``null_text_w_ptp.ipynb``); the one generalisation is written in :func:`optimise_null_text`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ddpm.guidance import classifier_free_guidance
from ddim.inversion import Trajectory
from ldm.pipeline import StableDiffusion, check_guidance_scale
from unet.editor import Editor

# Algorithm 1's settings, as the official implementation runs them at 50 steps.
INNER_STEPS = 10
LEARNING_RATE = 1e-2
LEARNING_RATE_DECAY = 0.5  # the rate falls linearly by this fraction over the run: 1 - i / 100 at 50 steps
EARLY_STOP = 1e-5
EARLY_STOP_GROWTH = 1e-3  # the early-stop bound grows by this over the run: 2e-5 per step at 50 steps


@dataclass
class Inversion:
    """What editing starts from: the pivots, one null-text context per sampling step, and C."""

    latents: Trajectory  # DDIM inversion [z*_0, z*_{tau_1}, ..., z*_T], each (1, 4, h, w)
    uncond_per_step: list[torch.Tensor]  # one (1, 77, D) unconditional context per sampling step i
    cond: torch.Tensor  # (1, 77, D): the prompt's context C
    steps: int
    guidance_scale: float
    losses: list[list[float]] = field(default_factory=list)  # per step, the inner loop's losses (null-text only)

    def reconstruct(self, sd: StableDiffusion, progress: bool = True) -> torch.Tensor:
        """Guided DDIM sampling from z*_T with the per-step null texts: the reconstructed z_0 (1, 4, h, w)."""
        return sd.denoise(self.latents[-1], self.cond, steps=self.steps, guidance_scale=self.guidance_scale,
                          uncond_per_step=self.uncond_per_step, progress=progress)


# ---------------------------------------------------------------------------------- checks
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_real(name: str, value: Any, low: float, strict: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def _check_optimiser(inner_steps: Any, learning_rate: Any, early_stop: Any) -> None:
    _check_int("inner_steps", inner_steps, 1)
    _check_real("learning_rate", learning_rate, 0.0, strict=True)
    _check_real("early_stop", early_stop, 0.0, strict=False)


def _check_guidance(guidance_scale: Any) -> float:
    s = check_guidance_scale(guidance_scale)  # a finite number
    if s < 1:
        raise ValueError(f"guidance_scale must be >= 1 for an inversion (1 is the conditional model alone), got {s}")
    return s


def _check_common(prompt: Any, steps: Any, guidance_scale: Any) -> float:
    """The checks every inversion shares; returns the guidance scale as a float."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
    _check_int("steps", steps, 1)
    return _check_guidance(guidance_scale)


def pivots(sd: StableDiffusion, image_or_latents: Any, prompt: str, steps: int,
           progress: bool) -> tuple[Trajectory, torch.Tensor]:
    """Pivotal inversion (section 3.1): C = tau(prompt) and DDIM inversion with s = 1 under it,
    [z*_0, ..., z*_T]; ``result[-2 - i]`` is where sampling step i should land."""
    z0 = sd.image_latents(image_or_latents)  # (1, 4, h, w)
    cond = sd.encode_prompts([prompt])  # (1, 77, D)
    return sd.invert(z0, cond, steps=steps, guidance_scale=1.0, progress=progress), cond


# ----------------------------------------------------------------------- the optimisation
@dataclass
class NullTextResult:
    """What :func:`optimise_null_text` returns."""

    uncond_per_step: list[torch.Tensor]  # (1, 77, D) each, u_t for sampling step i = 0..steps-1
    losses: list[list[float]]  # the inner loop's losses, before each Adam update, per step
    trajectory: list[torch.Tensor]  # [z_T, ..., z_0] the guided sampler took: what reconstruct() retraces


class NullTextOptimiser(Editor):
    """The inner loop of Algorithm 1 as an editor of the sampling loop: at each step it optimises
    the step's unconditional context u_t from the latent z_t the loop has reached (the loop's
    :meth:`unet.Editor.unconditional` hook), and it records what the loop then does.

    ``latents`` are the pivots [z*_0, ..., z*_T]; step i lands on ``latents[-2 - i]``.
    """

    def __init__(self, sd: StableDiffusion, latents: Sequence[torch.Tensor], cond: torch.Tensor, guidance_scale: float,
                 inner_steps: int, learning_rate: float, early_stop: float, start: torch.Tensor) -> None:
        self.sd, self.latents, self.cond, self.s = sd, latents, cond, guidance_scale
        self.inner_steps, self.learning_rate, self.early_stop = inner_steps, learning_rate, early_stop
        self.steps = len(latents) - 1
        self.timesteps = [-1] + sd.timesteps(self.steps).tolist()[::-1]  # ascending, as the pivots: -1 is z*_0
        self.previous = start  # (1, 77, D): u_{t+1}, the empty prompt's context before step 0
        self.result = NullTextResult([], [], [latents[-1]])

    def unconditional(self, i: int, t: int, z: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
        target = self.latents[-2 - i].clone()  # (1, 4, h, w): z*_{t'}, where this step should land
        t_prev = self.timesteps[-2 - i]
        u = self.previous.detach().clone()  # (1, 77, D): starts from the previous step's optimum
        losses: list[float] = []
        if self.s != 1:
            sd = self.sd
            u.requires_grad_(True)
            optimizer = torch.optim.Adam([u], lr=self.learning_rate * (1 - LEARNING_RATE_DECAY * i / self.steps))
            eps_cond = sd.unet(z, t, self.cond)  # (1, 4, h, w), no gradient (the loop runs under no_grad)
            with torch.enable_grad():
                for _ in range(self.inner_steps):
                    eps_uncond = sd.unet(z, t, u)  # (1, 4, h, w), depends on u
                    eps = classifier_free_guidance(eps_uncond, eps_cond, self.s)  # (1, 4, h, w), Eq. 6
                    loss = F.mse_loss(sd.step(eps, z, t, t_prev), target)  # scalar; Song et al. Eq. 12, eta 0
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward(inputs=[u])  # the gradient goes to u alone
                    optimizer.step()
                    losses.append(loss.item())
                    if losses[-1] < self.early_stop + EARLY_STOP_GROWTH * i / self.steps:
                        break
            u = u.detach()  # (1, 77, D)
        self.result.uncond_per_step.append(u)
        self.result.losses.append(losses)
        self.previous = u
        return u  # the loop now takes the guided step with [u_t, C]

    def end_step(self, latents: torch.Tensor, i: int, t: int | torch.Tensor) -> torch.Tensor:
        self.result.trajectory.append(latents)
        return latents


def optimise_null_text(sd: StableDiffusion, latents: Sequence[torch.Tensor], cond: torch.Tensor, *,
                       guidance_scale: float = 7.5, inner_steps: int = INNER_STEPS,
                       learning_rate: float = LEARNING_RATE, early_stop: float = EARLY_STOP,
                       progress: bool = True) -> NullTextResult:
    """Null-text optimisation (section 3.2, Algorithm 1) along the pivots ``latents`` = [z*_0, ..., z*_T].

    For step i = 0..N-1 (t = tau_{N-i}, t' the next timestep visited; N = len(latents) - 1):

        u_t  <- u_{t+1} (step i - 1's optimum; the empty prompt's context at i = 0)
        eps_c = eps(z_t, t, C)                                   once, no gradient
        repeat ``inner_steps`` times (Adam on u_t):
            eps_tilde = eps(z_t, t, u_t) + s (eps_c - eps(z_t, t, u_t))        Ho & Salimans Eq. 6
            loss = mean (z*_{t'} - DDIM step(z_t, eps_tilde))^2               Song et al. Eq. 12
            stop early once loss < early_stop + growth i / N
        z_{t'} = DDIM step(z_t, eps_tilde(z_t, t, C, u_t))       the step denoise() takes, batch [u_t, C]

    The outer loop is the library's sampling loop (``sd.denoise``) with a
    :class:`NullTextOptimiser` as its editor, so the advancing step is the very step that
    ``Inversion.reconstruct`` takes: ``trajectory[-1]`` is bit for bit its z_0 (tested).

    The official code's learning rate 0.01 (1 - i / 100) and bound 1e-5 + 2e-5 i are written for
    its 50 steps; here they are the same at 50 steps and scale with the fraction of the run i / N,
    lr (1 - 0.5 i / N) and early_stop + 1e-3 i / N, so that N > 100 steps cannot make the rate
    negative. With s = 1, eps_tilde = eps_c whatever u_t is: nothing to optimise, u_t stays "".

    Only u_t requires a gradient: the U-Net's parameters get no ``.grad`` (``backward(inputs=[u])``),
    and nothing about them is switched.
    """
    s = _check_guidance(guidance_scale)
    _check_optimiser(inner_steps, learning_rate, early_stop)
    steps = len(latents) - 1
    # Out of inference mode, should the caller be in it: its tensors cannot be saved for a backward
    # pass, so z, C and the targets are cloned into ordinary ones (the same bits).
    with torch.inference_mode(False):
        start = sd.encode_prompts([""])  # (1, 77, D): the null text's starting point
        cond, z_T = cond.clone(), latents[-1].clone()  # (1, 77, D), (1, 4, h, w) = z*_T
        optimiser = NullTextOptimiser(sd, [z.clone() for z in latents], cond, s, inner_steps, learning_rate,
                                      early_stop, start)
        sd.denoise(z_T, cond, start if s != 1 else None, steps=steps, guidance_scale=s, editor=optimiser,
                   progress=progress, desc="null-text optimisation")
    return optimiser.result


# --------------------------------------------------------------------------- the three
def null_text_inversion(sd: StableDiffusion, image_or_latents: Any, prompt: str, *, steps: int = 50,
                        guidance_scale: float = 7.5, inner_steps: int = INNER_STEPS,
                        learning_rate: float = LEARNING_RATE, early_stop: float = EARLY_STOP,
                        progress: bool = True) -> Inversion:
    """Null-text inversion (Mokady et al. 2023): pivotal DDIM inversion, then one optimised
    null-text context per step (:func:`optimise_null_text`)."""
    s = _check_common(prompt, steps, guidance_scale)
    _check_optimiser(inner_steps, learning_rate, early_stop)
    latents, cond = pivots(sd, image_or_latents, prompt, steps, progress)
    found = optimise_null_text(sd, latents, cond, guidance_scale=s, inner_steps=inner_steps,
                               learning_rate=learning_rate, early_stop=early_stop, progress=progress)
    return Inversion(latents, found.uncond_per_step, cond, steps, s, found.losses)


def negative_prompt_inversion(sd: StableDiffusion, image_or_latents: Any, prompt: str, *, steps: int = 50,
                              guidance_scale: float = 7.5, progress: bool = True) -> Inversion:
    """Negative-prompt inversion (Miyake et al. 2023): pivotal DDIM inversion, and u_t = C at every
    step (the prompt as its own negative prompt); no optimisation."""
    s = _check_common(prompt, steps, guidance_scale)
    latents, cond = pivots(sd, image_or_latents, prompt, steps, progress)
    return Inversion(latents, [cond] * steps, cond, steps, s, [[] for _ in range(steps)])


def ddim_inversion(sd: StableDiffusion, image_or_latents: Any, prompt: str, *, steps: int = 50,
                   guidance_scale: float = 7.5, progress: bool = True) -> Inversion:
    """The baseline: DDIM inversion with s = 1, then guided sampling with the empty prompt's context
    at every step, as plain text-to-image sampling would use. Drifts from the image as s grows."""
    s = _check_common(prompt, steps, guidance_scale)
    latents, cond = pivots(sd, image_or_latents, prompt, steps, progress)
    uncond = sd.encode_prompts([""])  # (1, 77, D)
    return Inversion(latents, [uncond] * steps, cond, steps, s, [[] for _ in range(steps)])
