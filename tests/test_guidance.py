"""Classifier guidance (Dhariwal & Nichol 2021, Eq. 14) and classifier-free guidance (Ho & Salimans
2022, Eq. 6), checked against a case with a closed form.

The oracle: x_0 is a mixture of two 2-D Gaussians, p(x_0 | y) = N(m_y, v_y I) with weights w_y.
Noised by Eq. 4 of Ho et al. each class stays Gaussian,

    p_t(x_t | y) = N(sqrt(ab) m_y, (ab v_y + 1 - ab) I),       ab = alpha_bar_t,

so the class-conditional score is -(x_t - sqrt(ab) m_y) / (ab v_y + 1 - ab), the unconditional score is
its average under the posterior p_t(y | x_t), grad log p_t(y | x_t) is their difference, and
eps = -sqrt(1 - ab) * score. Everything is float64; the tolerances are float64 rounding.
"""
from __future__ import annotations

import math

import pytest
import torch

from ddim import ddim_sample
from ddpm import NoiseSchedule, ddpm_sample
from ddpm.guidance import (
    classifier_free_guidance,
    classifier_free_guided_model,
    classifier_gradient,
    classifier_guidance,
    classifier_guided_model,
)
from toyworld.toy2d_conditional import ConditionalDenoiser, GaussianClusters, labelled_batches

SCHEDULE = NoiseSchedule.from_name("linear")
MEANS = torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=torch.float64)  # (2, 2)
VARS = torch.tensor([0.3, 0.8], dtype=torch.float64)  # (2,)
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)  # (2,)
EPS64 = torch.finfo(torch.float64).eps  # 2.2e-16


class Mixture:
    """The closed forms of the module docstring, for any means, variances and weights."""

    def __init__(self, means=MEANS, variances=VARS, weights=WEIGHTS) -> None:
        self.means, self.vars, self.weights = means, variances, weights

    def _ab(self, t: torch.Tensor) -> torch.Tensor:
        return SCHEDULE.alpha_bar[t].reshape(-1, 1, 1)  # (B or 1, 1, 1)

    def log_joint(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log w_y + log N(x; sqrt(ab) m_y, var_y I), (B, K); the logits of the exact classifier."""
        ab = self._ab(t)
        var = ab[:, :, 0] * self.vars + 1 - ab[:, :, 0]  # (B or 1, K)
        sq = ((x[:, None, :] - ab.sqrt() * self.means) ** 2).sum(-1)  # (B, K)
        return self.weights.log() - sq / (2 * var) - torch.log(2 * math.pi * var)

    def class_scores(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad log p_t(x | y) for every y, (B, K, 2)."""
        ab = self._ab(t)
        var = (ab * self.vars[:, None] + 1 - ab)  # (B or 1, K, 1)
        return -(x[:, None, :] - ab.sqrt() * self.means) / var

    def posterior(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.log_joint(x, t), dim=1)  # (B, K)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.posterior(x, t)[:, :, None] * self.class_scores(x, t)).sum(1)  # (B, 2)

    def grad_log_posterior(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.class_scores(x, t)[torch.arange(len(y)), y] - self.score(x, t)  # (B, 2)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - SCHEDULE.alpha_bar[t]).sqrt().reshape(-1, 1)  # (B or 1, 1)

    def eps_uncond(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -self.sigma(t) * self.score(x, t)  # (B, 2)

    def eps_cond(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.sigma(t) * self.class_scores(x, t)[torch.arange(len(y)), y]  # (B, 2)


ORACLE = Mixture()


def _points(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, 2, generator=g, dtype=torch.float64)  # spread over both clusters and beyond
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    return x, t, y


def _close(actual: torch.Tensor, expected: torch.Tensor, ulps: float) -> None:
    """Equal up to ``ulps`` float64 roundings of the largest magnitude involved."""
    scale = max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(actual, expected, rtol=0, atol=ulps * EPS64 * scale)


# --- classifier-free guidance ------------------------------------------------------------------


def test_cfg_scale_0_is_unconditional_and_1_is_conditional():
    g = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(2, 8, 4, 5, 5, generator=g, dtype=torch.float64)
    assert torch.equal(classifier_free_guidance(eps_u, eps_c, 0.0), eps_u)  # 0 * d added: exact
    # eps_u + (eps_c - eps_u): two roundings, each at most half an ulp of a value <= 2 max|eps|.
    _close(classifier_free_guidance(eps_u, eps_c, 1.0), eps_c, ulps=4)


def test_cfg_is_affine_in_the_scale():
    g = torch.Generator().manual_seed(1)
    eps_u, eps_c = torch.randn(2, 16, 2, generator=g, dtype=torch.float64)
    f0, f1 = classifier_free_guidance(eps_u, eps_c, 0.0), classifier_free_guidance(eps_u, eps_c, 1.0)
    for s in (-1.0, 0.5, 3.0, 7.5, 20.0):
        # f(s) = f(0) + s (f(1) - f(0)); rounding grows with s (a few ulps of s * max|eps|).
        _close(classifier_free_guidance(eps_u, eps_c, s), f0 + s * (f1 - f0), ulps=8 * (1 + abs(s)))


def test_cfg_rejects_bad_input():
    a = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"must have the same shape"):
        classifier_free_guidance(a, torch.zeros(2, 5), 1.0)
    for bad in (True, float("nan"), "7.5", None):
        with pytest.raises(ValueError, match=r"guidance scale must be a real number"):
            classifier_free_guidance(a, a, bad)


def test_cfg_model_runs_one_doubled_batch_in_the_uncond_then_cond_layout():
    calls = []

    def model(x, t, c):  # eps depends on the condition only: c itself, broadcast over x
        calls.append((x.clone(), t.clone(), c.clone()))
        return c[:, None].double().expand_as(x) + 0 * x  # (2B, 2)

    x = torch.randn(3, 2, dtype=torch.float64)
    cond, uncond = torch.tensor([0, 1, 2]), torch.full((3,), 9)
    out = classifier_free_guided_model(model, cond, uncond, 2.0)(x, torch.tensor(500))
    assert len(calls) == 1, "one network call per step, on the doubled batch"
    x_in, t_in, c_in = calls[0]
    assert torch.equal(x_in, torch.cat([x, x])) and torch.equal(t_in, torch.full((6,), 500))
    assert torch.equal(c_in, torch.cat([uncond, cond])), "Stable Diffusion's layout: [uncond..., cond...]"
    expected = 9 + 2.0 * (cond[:, None].double() - 9)  # Eq. 6 with s = 2 on the two halves
    assert torch.equal(out, expected.expand(3, 2))


def test_cfg_model_rejects_bad_input():
    model = ConditionalDenoiser(3)
    with pytest.raises(ValueError, match=r"cond \(4,\) and uncond \(3,\) must have the same shape"):
        classifier_free_guided_model(model, torch.zeros(4, dtype=torch.long), torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match=r"guidance scale must be a real number"):
        classifier_free_guided_model(model, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), "high")
    guided = classifier_free_guided_model(model, torch.zeros(4, dtype=torch.long), torch.full((4,), 3), 3.0)
    with pytest.raises(ValueError, match=r"cond holds 4 conditions, but the batch x_t \(5, 2\) has 5 items"):
        guided(torch.zeros(5, 2), torch.tensor(10))


# --- classifier guidance, against the closed form -----------------------------------------------


def test_classifier_gradient_by_autograd_is_the_closed_form():
    x, t, y = _points()
    grad = classifier_gradient(ORACLE.log_joint, x, t, y)  # (64, 2): autograd through log_softmax
    # Both sides are O(1..10) sums of a few float64 terms; 64 ulps is far below any modelling error.
    _close(grad, ORACLE.grad_log_posterior(x, t, y), ulps=64)


def test_classifier_gradient_works_inside_the_samplers_no_grad():
    x, t, y = _points(seed=1)
    with torch.no_grad():  # ddpm_sample and ddim_sample run the model under no_grad
        grad = classifier_gradient(ORACLE.log_joint, x, t, y)
    _close(grad, ORACLE.grad_log_posterior(x, t, y), ulps=64)
    assert not grad.requires_grad


@pytest.mark.parametrize("per_item_t", [False, True])
def test_classifier_guidance_at_scale_1_gives_the_conditional_eps(per_item_t):
    # Bayes: grad log p(x | y) = grad log p(x) + grad log p(y | x), so Eq. 14 with exact models is exact.
    x, t, y = _points(seed=2)
    if not per_item_t:
        t = torch.tensor(400)
    tb = t if per_item_t else t.expand(len(x))
    grad = classifier_gradient(ORACLE.log_joint, x, tb, y)
    eps_hat = classifier_guidance(SCHEDULE, ORACLE.eps_uncond(x, tb), t, grad, 1.0)
    _close(eps_hat, ORACLE.eps_cond(x, tb, y), ulps=128)
    assert torch.equal(classifier_guidance(SCHEDULE, ORACLE.eps_uncond(x, tb), t, grad, 0.0), ORACLE.eps_uncond(x, tb))


@pytest.mark.parametrize("scale", [0.5, 3.0, 7.5])
def test_cfg_with_exact_models_is_classifier_guidance_with_the_implicit_classifier(scale):
    # eps(x, y) - eps(x) = -sqrt(1 - ab) grad log p(y | x) (Ho & Salimans section 3.2): both guidances agree.
    x, t, y = _points(seed=3)
    eps_u, eps_c = ORACLE.eps_uncond(x, t), ORACLE.eps_cond(x, t, y)
    cg = classifier_guidance(SCHEDULE, eps_u, t, classifier_gradient(ORACLE.log_joint, x, t, y), scale)
    _close(classifier_free_guidance(eps_u, eps_c, scale), cg, ulps=128 * (1 + scale))


def test_guidance_sharpens_towards_the_class():
    # Along the guided direction log p(y | x_t) rises: a small step x - h * eps_hat / sigma (a score
    # ascent step) gains more log p(y | x) as s grows.
    x, _, y = _points(seed=4)
    t = torch.full((len(x),), 300)
    grad = classifier_gradient(ORACLE.log_joint, x, t, y)
    gains = []
    for s in (0.0, 1.0, 3.0, 10.0):
        eps_hat = classifier_guidance(SCHEDULE, ORACLE.eps_uncond(x, t), t, grad, s)
        x_new = x - 1e-3 * eps_hat / ORACLE.sigma(t)
        log_post = lambda z: torch.log_softmax(ORACLE.log_joint(z, t), 1)[torch.arange(len(y)), y]  # noqa: E731
        gains.append(float((log_post(x_new) - log_post(x)).mean()))
    assert gains == sorted(gains) and gains[-1] > 0, gains


def test_guided_models_inside_ddim_agree_with_the_exact_conditional_model():
    # The wrappers used by the samplers: classifier guidance at s (unconditional eps + exact classifier)
    # and CFG at s (exact conditional model with a null label) give the same deterministic DDIM path.
    n = 256
    y = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(5))
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    NULL = 2

    def cond_model(x, t, c):  # c == NULL means "no condition": the unconditional eps
        out = ORACLE.eps_uncond(x, t).clone()
        has_y = c != NULL
        out[has_y] = ORACLE.eps_cond(x[has_y], t[has_y], c[has_y])
        return out

    for s in (1.0, 3.0):
        kw = dict(schedule=SCHEDULE, num_inference_steps=20, x_T=x_T, shape=None, progress=False)
        cg = ddim_sample(classifier_guided_model(ORACLE.eps_uncond, ORACLE.log_joint, y, SCHEDULE, s), **kw)
        cfg = ddim_sample(classifier_free_guided_model(cond_model, y, torch.full_like(y, NULL), s), **kw)
        # 20 steps, each adding ~100 ulps of the O(1..10) values: 1e-11 is still far below any real error.
        torch.testing.assert_close(cg, cfg, rtol=0, atol=1e-11)
        if s == 1.0:
            exact = ddim_sample(lambda x, t: ORACLE.eps_cond(x, t, y), **kw)
            torch.testing.assert_close(cg, exact, rtol=0, atol=1e-11)


def test_classifier_guidance_at_scale_1_samples_the_class_conditional():
    # DDPM with the exact unconditional eps + exact classifier at s = 1 must draw from N(m_y, v_y I).
    n = 2000
    y = torch.ones(n, dtype=torch.long)  # the wider class: v = 0.8 around (1.5, -0.5), weight 0.7
    guided = classifier_guided_model(ORACLE.eps_uncond, ORACLE.log_joint, y, SCHEDULE, 1.0)
    x0 = ddpm_sample(guided, (n, 2), SCHEDULE, 100, variance="fixed_large", generator=torch.Generator().manual_seed(7),
                     dtype=torch.float64, progress=False)
    mean, var = x0.mean(0), x0.var(0)  # (2,) each
    # 5 standard errors of the sample mean and variance, plus 0.03 for the 100-step discretisation
    # (measured with 20000 points: bias <= 0.008 in the mean and <= 0.02 in the variance; with
    # fixed_small the variance comes out 0.05-0.07 low, so that variance is not used here).
    assert ((mean - MEANS[1]).abs() < 5 * (VARS[1] / n).sqrt() + 0.03).all(), mean
    assert ((var - VARS[1]).abs() < 5 * VARS[1] * math.sqrt(2 / (n - 1)) + 0.03).all(), var


def test_classifier_guidance_rejects_bad_input():
    eps, grad = torch.zeros(4, 2), torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"grad_log_prob has shape \(4, 3\), expected the shape of eps \(4, 2\)"):
        classifier_guidance(SCHEDULE, eps, 10, torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError, match=r"grad_log_prob has dtype torch.float64"):
        classifier_guidance(SCHEDULE, eps, 10, grad.double(), 1.0)
    with pytest.raises(ValueError, match=r"t out of range: got values in \[1000, 1000\]"):
        classifier_guidance(SCHEDULE, eps, 1000, grad, 1.0)
    with pytest.raises(ValueError, match=r"t has shape \(3,\), expected a scalar or shape \(4,\)"):
        classifier_guidance(SCHEDULE, eps, torch.tensor([1, 2, 3]), grad, 1.0)
    with pytest.raises(ValueError, match=r"guidance scale must be a real number, got nan"):
        classifier_guidance(SCHEDULE, eps, 10, grad, float("nan"))


def test_classifier_gradient_rejects_bad_input():
    x, t = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"y must be one integer class index per batch item, shape \(4,\)"):
        classifier_gradient(ORACLE.log_joint, x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(4,\) and dtype torch.float32"):
        classifier_gradient(ORACLE.log_joint, x, t, torch.zeros(4))
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 1\], got values in \[0, 2\]"):
        classifier_gradient(ORACLE.log_joint, x, t, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"the classifier must return logits of shape \(4, num_classes\), got \(4,\)"):
        classifier_gradient(lambda x, t: x.sum(1), x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"y must be a 1-D tensor of integer class indices"):
        classifier_guided_model(ORACLE.eps_uncond, ORACLE.log_joint, torch.zeros(4, 1, dtype=torch.long), SCHEDULE, 1.0)


# --- the 2-D conditional toy ------------------------------------------------------------------------


def test_gaussian_clusters_posterior_is_the_closed_form():
    data = GaussianClusters.triangle(radius=1.0, std=0.6)
    oracle = Mixture(data.means, torch.full((3,), 0.36, dtype=torch.float64), torch.full((3,), 1 / 3, dtype=torch.float64))
    x, t, _ = _points(seed=8)
    for tt in (0, 250, 999):
        ab = float(SCHEDULE.alpha_bar[tt])
        _close(data.posterior(x, ab), oracle.posterior(x, torch.tensor(tt)), ulps=64)


def test_label_dropout_rate_and_null_label():
    data = GaussianClusters.triangle()
    x0, kw = next(labelled_batches(data, 20000, 0.15, 3, torch.Generator().manual_seed(9)))
    dropped = float((kw["y"] == 3).float().mean())
    assert abs(dropped - 0.15) < 5 * math.sqrt(0.15 * 0.85 / 20000), dropped  # 5 binomial standard errors
    model = ConditionalDenoiser(3)
    assert model.null_label == 3 and model(x0[:5], torch.arange(5), kw["y"][:5]).shape == (5, 2)
    with pytest.raises(ValueError, match=r"y must hold 2 labels in \[0, 3\] \(3 = null\)"):
        model(x0[:2], torch.arange(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"p_uncond must lie in \[0, 1\], got 1.5"):
        next(labelled_batches(data, 8, 1.5, 3))
