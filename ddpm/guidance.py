"""Guidance: trading diversity for fidelity to a condition y (a class, a caption).

Both kinds of guidance start from Bayes' rule for the score of the noisy marginal p_t:

    grad_{x_t} log p_t(x_t | y) = grad_{x_t} log p_t(x_t) + grad_{x_t} log p_t(y | x_t)

and from the link between the noise prediction and the score (Dhariwal & Nichol 2021, section 4.2;
Song et al. 2021): eps(x_t) = -sqrt(1 - alpha_bar_t) grad_{x_t} log p_t(x_t).

Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis",
section 4.2) trains a classifier p_phi(y | x_t) on *noisy* inputs and adds its gradient, scaled by s:

    eps_hat(x_t) = eps_theta(x_t) - sqrt(1 - alpha_bar_t) s grad_{x_t} log p_phi(y | x_t)   Eq. 14, Algorithm 2

With s = 1 and exact models this is the conditional eps; with s != 1 it is the eps of
p_t(x_t) p_t(y | x_t)^s, a distribution sharpened towards inputs the classifier is sure about.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6) trains
one network both with the condition and without it (the condition dropped, e.g. an empty
caption, for a fraction of the training examples) and mixes its two predictions at sampling time:

    eps_tilde(x_t, y) = (1 + w) eps(x_t, y) - w eps(x_t)                       Ho & Salimans Eq. 6

Stable Diffusion (and diffusers) write the same thing with s = 1 + w, the "guidance scale":

    eps_tilde = eps(x_t) + s (eps(x_t, y) - eps(x_t))

s = 1 is the plain conditional model; s > 1 extrapolates away from the unconditional prediction,
sharpening p(y | x_t)^(s - 1) p(x_t | y) (Ho & Salimans section 3.2); s = 0 is the unconditional model.
Since eps(x_t, y) - eps(x_t) = -sqrt(1 - alpha_bar_t) grad log p_t(y | x_t) (Bayes' rule above), this
is classifier guidance with the "implicit classifier" p(y | x_t) = p(x_t | y) p(y) / p(x_t).

The two ``*_guided_model`` helpers wrap a model into the ``model(x_t, t) -> eps`` callable that
``ddpm_sample`` and ``ddim_sample`` take.
"""
from __future__ import annotations

from typing import Callable

import torch

from .checks import check_batch_timesteps, check_like, check_timesteps
from .forward import broadcast_to_batch
from .reverse import Model
from .schedule import NoiseSchedule

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A noisy-input classifier: ``classifier(x_t, t)`` returns logits of shape (B, num_classes)."""

ConditionalModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""A conditional denoiser: ``model(x_t, t, c)`` with ``c`` batched along dim 0 (labels, text contexts)."""


def _check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale:
        raise ValueError(f"guidance scale must be a real number, got {scale!r}")


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_uncond + scale * (eps_cond - eps_uncond)  (Ho & Salimans Eq. 6 with scale = 1 + w)."""
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"eps_uncond {tuple(eps_uncond.shape)} and eps_cond {tuple(eps_cond.shape)} must have the same shape")
    _check_scale(scale)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def classifier_gradient(classifier: Classifier, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_{x_t} log p_phi(y | x_t) by autograd, with p_phi = softmax(classifier(x_t, t)).

    ``y`` holds one class index per batch item. Each item's log-probability depends on its own
    x_t only, so the gradient of their sum is every item's own gradient. Runs under
    ``torch.enable_grad()``, so it works inside the samplers (which run under ``no_grad``);
    the result is detached. Returns x_t's shape.
    """
    if y.ndim != 1 or y.shape[0] != x_t.shape[0] or y.is_floating_point():
        raise ValueError(f"y must be one integer class index per batch item, shape ({x_t.shape[0]},), "
                         f"got shape {tuple(y.shape)} and dtype {y.dtype}")
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)  # (B, num_classes)
        if logits.ndim != 2 or logits.shape[0] != x_t.shape[0]:
            raise ValueError(f"the classifier must return logits of shape ({x_t.shape[0]}, num_classes), "
                             f"got {tuple(logits.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise ValueError(f"class indices must lie in [0, {logits.shape[1] - 1}], "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
        log_prob = torch.log_softmax(logits, dim=1).gather(1, y[:, None].to(logits.device))  # (B, 1)
        (grad,) = torch.autograd.grad(log_prob.sum(), x)  # (B, ...) like x_t
    return grad.detach()


def classifier_guidance(
    schedule: NoiseSchedule, eps: torch.Tensor, t: torch.Tensor | int, grad_log_prob: torch.Tensor, scale: float
) -> torch.Tensor:
    """eps_hat = eps - sqrt(1 - alpha_bar_t) * scale * grad_{x_t} log p(y | x_t)  (Dhariwal & Nichol Eq. 14).

    ``t`` is one timestep for the batch or one per item; ``grad_log_prob`` has eps's shape and
    dtype (``classifier_gradient`` computes it). With ``scale = 1`` and exact models the result is
    the class-conditional eps (Bayes' rule for the score); ``scale = 0`` returns ``eps``.
    """
    check_like(eps, "eps", grad_log_prob=grad_log_prob)
    _check_scale(scale)
    t = check_timesteps(t, schedule.num_train_timesteps)
    check_batch_timesteps(t, eps, "eps")
    sigma = broadcast_to_batch((1 - schedule.alpha_bar[t]).sqrt(), eps)  # scalar or (B, 1, ..., 1)
    return eps - sigma * scale * grad_log_prob


def classifier_guided_model(
    model: Model, classifier: Classifier, y: torch.Tensor, schedule: NoiseSchedule, scale: float
) -> Model:
    """``model(x_t, t)`` (unconditional) plus classifier guidance towards the labels ``y`` (B,).

    Returns ``guided(x_t, t) -> eps_hat`` for ``ddpm_sample`` / ``ddim_sample`` (Algorithm 2 with
    DDIM; with DDPM the eps shift moves the mean of Eq. 11 by beta_t / sqrt(alpha_t) * s * grad,
    about Algorithm 1's Sigma s grad). The batch sampled must have one label per item.
    """
    _check_scale(scale)
    if y.ndim != 1 or y.is_floating_point():
        raise ValueError(f"y must be a 1-D tensor of integer class indices, got shape {tuple(y.shape)} and dtype {y.dtype}")

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(x_t, t)  # (B, ...)
        grad = classifier_gradient(classifier, x_t, t, y)  # (B, ...)
        return classifier_guidance(schedule, eps, t, grad, scale)

    return guided


def classifier_free_guided_model(
    model: ConditionalModel, cond: torch.Tensor, uncond: torch.Tensor, scale: float
) -> Model:
    """One conditional network, guided without a classifier (Ho & Salimans Eq. 6, s = 1 + w).

    ``cond`` and ``uncond`` are the condition and the "null" condition for each batch item
    (class labels and the null label; text contexts and the empty prompt's context). Each call
    runs the network once on the doubled batch in Stable Diffusion's layout
    ``[uncond for every item, cond for every item]`` and mixes the two halves with
    ``classifier_free_guidance``. Returns ``guided(x_t, t) -> eps_tilde``.
    """
    _check_scale(scale)
    if cond.shape != uncond.shape:
        raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} must have the same shape")

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        if cond.shape[0] != B:
            raise ValueError(f"cond holds {cond.shape[0]} conditions, but the batch x_t {tuple(x_t.shape)} has {B} items")
        t = t.expand(B) if t.ndim == 0 else t  # (B,)
        eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]))  # (2B, ...)
        eps_uncond, eps_cond = eps.chunk(2)  # (B, ...) each
        return classifier_free_guidance(eps_uncond, eps_cond, scale)

    return guided
