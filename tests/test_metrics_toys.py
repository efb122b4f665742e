"""Toy datasets and representations shared by the metrics tests (no tests of its own)."""
from __future__ import annotations

import numpy as np
import torch


class ToyData:
    """Factor classes rendered deterministically as a (1, 1, F) 'image' of class / (size - 1).

    Follows the protocol the sampling scores need: factor_sizes, sample_factors, render.
    Factors have at most 4 classes, so a single-latent linear SVM can read each perfectly
    (SAP of a perfect code is then ~1)."""

    def __init__(self, factor_sizes=(3, 4, 4, 3)) -> None:
        self.factor_sizes = list(factor_sizes)
        self.renders = 0

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.factor_sizes, size=(n, len(self.factor_sizes)))

    def render(self, classes: np.ndarray) -> torch.Tensor:
        self.renders += len(classes)
        scale = np.asarray(self.factor_sizes, dtype=np.float32) - 1
        return torch.from_numpy(np.asarray(classes, dtype=np.float32) / scale).reshape(len(classes), 1, 1, -1)


def perfect(data: ToyData):
    """Codes = the factor classes, one latent per factor."""
    scale = torch.tensor(data.factor_sizes, dtype=torch.float32) - 1
    return lambda images: images.flatten(1) * scale


def noisy_perfect(data: ToyData, noise: float = 0.05, seed: int = 0):
    """Factor classes plus a little noise (a continuous code)."""
    rng = np.random.default_rng(seed)
    base = perfect(data)
    return lambda images: base(images).numpy() + noise * rng.standard_normal((len(images), len(data.factor_sizes)))


def noise(data: ToyData, seed: int = 0, latents: int | None = None):
    """Codes that ignore the image."""
    rng = np.random.default_rng(seed)
    m = latents or len(data.factor_sizes)
    return lambda images: rng.standard_normal((len(images), m))


def mixed(data: ToyData, noise_scale: float = 0.05, seed: int = 0):
    """Factors 0 and 1 rotated into latents 0 and 1 (f0 + f1, f0 - f1); the others kept."""
    rng = np.random.default_rng(seed)
    base = perfect(data)

    def represent(images):
        f = base(images).numpy()
        f = f / (np.asarray(data.factor_sizes) - 1)
        out = f.copy()
        out[:, 0], out[:, 1] = f[:, 0] + f[:, 1], f[:, 0] - f[:, 1]
        return out + noise_scale * rng.standard_normal(f.shape)
    return represent


def transformed(represent, perm: np.ndarray, scale: np.ndarray, shift: np.ndarray):
    """``represent`` with its latents rescaled, shifted and permuted."""
    def fn(images):
        codes = represent(images)
        codes = codes.numpy() if isinstance(codes, torch.Tensor) else codes
        return (codes * scale + shift)[:, perm]
    return fn


def codes_and_factors(data: ToyData, represent, n: int, seed: int):
    rng = np.random.default_rng(seed)
    factors = data.sample_factors(n, rng)
    codes = represent(data.render(factors))
    codes = codes.numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    return codes.astype(np.float64), factors
