"""Pictures of one model: reconstructions, latent traversals, KL per dimension.

Plain functions of arrays returning matplotlib figures, shared by the training job's MLflow
artifacts, the report and the notebook.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vaesweep.contract import COLLAPSE_THRESHOLD  # noqa: E402


def _to_hwc(img: np.ndarray) -> np.ndarray:
    img = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def image_grid(rows: Sequence[np.ndarray], row_labels: Sequence[str] | None = None,
               title: str | None = None, cell: float = 1.0) -> Figure:
    """A grid of images: ``rows`` is a list of arrays shaped (n, C, H, W).

    Drawn as one mosaic on one axes (a white gap between cells), not one axes per image:
    matplotlib's cost is per axes, so a 10x9 traversal grid takes tens of milliseconds
    instead of seconds at the end of every training job."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    cells = [[_to_hwc(img) for img in row] for row in rows]
    h, w = next(c for row in cells for c in row).shape[:2]
    gray = all(c.ndim == 2 for row in cells for c in row)
    gap = max(1, h // 16)
    shape = (n_rows * (h + gap) - gap, n_cols * (w + gap) - gap) + (() if gray else (3,))
    mosaic = np.ones(shape, dtype=np.float32)
    for i, row in enumerate(cells):
        for j, img in enumerate(row):
            if not gray and img.ndim == 2:
                img = img[..., None]
            mosaic[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = img
    fig, ax = plt.subplots(figsize=(cell * n_cols + 0.8, cell * n_rows + 0.4))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(n_rows)] if row_labels else [])
    if row_labels:
        ax.set_yticklabels(list(row_labels), fontsize=8)
        ax.tick_params(axis="y", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def reconstructions_figure(x: np.ndarray, x_hat: np.ndarray) -> Figure:
    """Inputs above their reconstructions (the head's mean image)."""
    return image_grid([x, x_hat], ["input", "recon."], "reconstructions")


def traversals_figure(rows: np.ndarray, kl_per_dim: np.ndarray | None = None) -> Figure:
    """``rows`` (M, steps, C, H, W): decoding with one latent swept, the others at a seed's
    posterior mean; rows labelled by dimension and its KL (most informative first)."""
    labels = [f"z{j}" + (f" {kl_per_dim[j]:.2f}" if kl_per_dim is not None else "")
              for j in range(len(rows))]
    order = np.argsort(-kl_per_dim) if kl_per_dim is not None else np.arange(len(rows))
    return image_grid([rows[j] for j in order], [labels[j] for j in order],
                      "latent traversals (row: dimension, KL nats)", cell=0.8)


def kl_per_dim_figure(kl_per_dim: np.ndarray, threshold: float = COLLAPSE_THRESHOLD) -> Figure:
    """Bar chart of the mean KL of each latent dimension (nats)."""
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(kl_per_dim) + 1), 3))
    colors = ["tab:blue" if v > threshold else "tab:gray" for v in kl_per_dim]
    ax.bar(np.arange(len(kl_per_dim)), kl_per_dim, color=colors)
    ax.set_xlabel("latent dimension"), ax.set_ylabel("KL (nats)")
    ax.set_xticks(np.arange(len(kl_per_dim)))
    ax.set_title("KL per dimension (grey: collapsed)")
    fig.tight_layout()
    return fig
