"""Continuous Bernoulli head on logits (Loaiza-Ganem & Cunningham 2019): the proper density
on [0, 1] of the Bernoulli "likelihood" that VAEs apply to non-binary pixels,

    p(x | λ) = C(λ) · λ^x (1 − λ)^(1−x),   C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ)

On logits η (λ = sigmoid(η)): 1 − 2λ = −tanh(η/2) and artanh(1 − 2λ) = −η/2, so
C = η / tanh(η/2), computed without rounding λ first; near λ = 0.5 (η = 0, where the
expression is 0/0) a Taylor series in η takes over.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vaesweep.likelihood.base import HEADS, LikelihoodHead

LOG_2 = math.log(2.0)
#: |η| below which the Taylor series are used (λ within 0.38..0.62). With terms up to u^10,
#: u = η/2, the first omitted terms (1382·u^12/638512875, 1382·u^11/638512875) are below
#: 1e-12 there, while the closed forms lose digits to cancellation (coth u − 1/u) as η → 0.
TAYLOR_BELOW = 0.5
#: u·coth u = 1 + Σ_k A_k u^(2k) and the Langevin function L(u) = coth u − 1/u = Σ_k A_k u^(2k−1)
#: share their coefficients (L = (u·coth u − 1)/u): 1/3, −1/45, 2/945, −1/4725, 2/93555
COTH_SERIES = (1 / 3, -1 / 45, 2 / 945, -1 / 4725, 2 / 93555)


def _series(u2: torch.Tensor) -> torch.Tensor:
    """Σ_k A_k·u2^(k−1) (Horner), so that u·coth u − 1 = u2·_series(u2) and L(u) = u·_series(u2)."""
    acc = torch.zeros_like(u2)
    for a in reversed(COTH_SERIES):
        acc = acc * u2 + a
    return acc


def _small(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask of |η| < TAYLOR_BELOW, η safe for the closed form, η safe for the series):
    both branches are evaluated, so each gets inputs where it is finite (gradients too)."""
    small = logits.abs() < TAYLOR_BELOW
    far = torch.where(small, torch.full_like(logits, TAYLOR_BELOW), logits)
    near = torch.where(small, logits, torch.zeros_like(logits))
    return small, far, near


def cb_log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """log C(λ) for λ = sigmoid(logits), finite for every finite logit.

    Away from 0: log C = log|η| − log tanh(|η|/2). Near 0, with u = η/2, C = 2·u·coth u and
    u·coth u = 1 + u²/3 − u⁴/45 + 2u⁶/945 − …, so log C = log 2 + log1p(u²/3 − u⁴/45 + …).
    """
    small, far, near = _small(logits)
    a = far.abs()
    closed = torch.log(a) - torch.log(torch.tanh(0.5 * a))
    u2 = (0.5 * near) ** 2
    series = LOG_2 + torch.log1p(u2 * _series(u2))
    return torch.where(small, series, closed)


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """The continuous Bernoulli mean λ/(2λ−1) + 1/(2 artanh(1−2λ)) (1/2 at λ = 1/2), on
    logits: 1/2 + L(η/2)/2 with the Langevin function L(u) = coth u − 1/u; near 0,
    L(u) = u/3 − u³/45 + 2u⁵/945 − …"""
    small, far, near = _small(logits)
    u = 0.5 * far
    closed = 1.0 / torch.tanh(u) - 1.0 / u
    v = 0.5 * near
    series = v * _series(v * v)
    return 0.5 + 0.5 * torch.where(small, series, closed)


@HEADS.register("continuous_bernoulli")
class ContinuousBernoulli(LikelihoodHead):
    """No parameters; the image shown is the CB mean, which differs from λ (it is pulled
    towards 0.5)."""

    support = (0.0, 1.0)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, x, reduction="none") - cb_log_normaliser(out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return cb_mean(out)

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        return torch.distributions.ContinuousBernoulli(logits=out)
