"""An importance-weighted bound on -log p(x) (Burda et al. 2016, eq. 8), with the posterior
as proposal:

    -log p(x) <= iwae_nll_k(x) = -log (1/k) sum_s p(x|z_s) p(z_s) / q(z_s|x),  z_s ~ q(z|x)

in nats per example. It is never above the ELBO's bound -ELBO(x) (k = 1, in expectation; with
the same samples, by Jensen's inequality for every draw), decreases towards -log p(x) as k
grows, and equals it for every k when q(z|x) is the true posterior.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LOG_2PI = math.log(2.0 * math.pi)
#: (sample, image) pairs per decoder pass on a CPU, at most. Smaller passes are faster there:
#: conv64's largest activation is 128 KB a pair, so 256 pairs stay under the 32 MB above which
#: glibc (as train.tune_allocator sets it) maps fresh pages for every pass and faults them in
#: again, and nearer the caches (k = 100 on 40 images: 2.5-3x faster than one pass of 4,000
#: pairs, and larger passes slower still; benchmarks/bench_iwae.py). evaluate_model passes it
#: as ``max_samples`` on a CPU; GPUs take metrics.iwae_max_samples.
CPU_PASS_PAIRS = 256


@torch.no_grad()
def log_importance_weights(encode: Encode, log_likelihood: LogLikelihood, x: torch.Tensor, k: int, *,
                           seed: int = 0, max_samples: int = 4096) -> torch.Tensor:
    """(k, B) log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x), z_s ~ q(z|x), seeded.

    ``encode(x) -> (mu, logvar)``; ``log_likelihood(x, z) -> (B,)`` sums log p(x|z) over the
    elements of each example. Samples go through the decoder ``max_samples`` (sample, example)
    pairs at a time, so memory stays bounded for any k; the samples and so the bound do not
    depend on these passes.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    mu, logvar = encode(x)
    b = mu.shape[0]
    std = torch.exp(0.5 * logvar)
    gen = torch.Generator(device=mu.device).manual_seed(int(seed))
    per_chunk = max(1, int(max_samples) // max(b, 1))
    out = []
    for start in range(0, k, per_chunk):
        kc = min(per_chunk, k - start)
        # one draw per sample, so the samples do not depend on how they are chunked
        eps = torch.stack([torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
                           for _ in range(kc)])
        z = mu + std * eps  # (kc, B, M)
        log_q = -0.5 * (eps.pow(2) + logvar + _LOG_2PI).sum(-1)
        log_p_z = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
        x_rep = x.unsqueeze(0).expand(kc, *x.shape).reshape(kc * b, *x.shape[1:])
        log_px_z = log_likelihood(x_rep, z.reshape(kc * b, -1)).reshape(kc, b)
        out.append((log_px_z + log_p_z - log_q).to(torch.float64))
    return torch.cat(out, dim=0)


def iwae_nll(encode: Encode, log_likelihood: LogLikelihood, x: torch.Tensor, k: int = 100, *,
             seed: int = 0, max_samples: int = 4096) -> torch.Tensor:
    """(B,) importance-weighted bound on -log p(x) with k samples, nats per example (float64)."""
    log_w = log_importance_weights(encode, log_likelihood, x, k, seed=seed, max_samples=max_samples)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def negative_elbo(encode: Encode, log_likelihood: LogLikelihood, x: torch.Tensor, k: int = 1, *,
                  seed: int = 0, max_samples: int = 4096) -> torch.Tensor:
    """(B,) Monte-Carlo estimate of -ELBO(x) = D + R from k samples of q(z|x), nats per example.
    With the same ``seed`` and ``k`` it is never below :func:`iwae_nll`."""
    log_w = log_importance_weights(encode, log_likelihood, x, k, seed=seed, max_samples=max_samples)
    return -log_w.mean(dim=0)
