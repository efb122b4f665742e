"""Encoders and decoders (``model=``), registered by name.

A model builder takes the image shape (C, H, W), the latent size M and the number of
decoder output channels (set by the likelihood head) and returns ``(encoder, decoder)``:
``encoder(x) -> (mu, logvar)`` and ``decoder(z) -> head parameters (B, out_channels, H, W)``.
Its keyword arguments are its config keys: their typed dataclass (:func:`model_config`) is
made from its signature, so a model is declared once, in one function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vaesweep.errors import ConfigError
from vaesweep.registry import Registry
from vaesweep.schema import PartConfig, config_from_signature, whole

MODELS = Registry("model", "model.name", package="vaesweep.nn")

#: latents M of every model unless model.latent_dim says otherwise (10, as Burgess et al. 2018
#: and Locatello et al. 2019)
LATENT_DIM = 10
#: the builders' arguments that are not config keys
BUILT_FROM = ("shape", "latent_dim", "out_channels")


@dataclass
class ModelConfig(PartConfig):
    """The key every model has: latent_dim, the number of latents M."""

    latent_dim: int = whole(LATENT_DIM, 1)


def model_config(name: str) -> type[PartConfig]:
    """The typed config of model ``name``: :class:`ModelConfig` plus the builder's keyword
    arguments (an ``int`` is a whole number >= 1, a sequence of ints a list of them; see
    :func:`vaesweep.schema.config_from_signature`), or the builder's own ``Config`` when it
    has one. Raises ConfigError (``model.name``) for an unregistered name."""
    builder = MODELS.get(name)
    if "Config" not in vars(builder):
        builder.Config = config_from_signature(builder, ModelConfig, BUILT_FROM,
                                               f"{builder.__name__}_config")
    return builder.Config


def model_defaults(name: str) -> dict[str, Any]:
    """The ``model`` keys of model ``name`` with their defaults (:func:`model_config`)."""
    return model_config(name).defaults()


class Encoder(nn.Module):
    """A feature trunk followed by one linear layer giving (mu, logvar)."""

    def __init__(self, trunk: nn.Module, features: int, latent_dim: int) -> None:
        super().__init__()
        self.trunk, self.head = trunk, nn.Linear(features, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.trunk(x)).chunk(2, dim=1)
        return mu, logvar


def _check_shape(name: str, shape: Sequence[int], ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError("model.name", name, allowed,
                          f"the data gives images of shape {tuple(shape)} (C, H, W); "
                          "choose a model for that size or another data=")


@MODELS.register("conv64")
def conv64(shape: Sequence[int], latent_dim: int, out_channels: int,
           channels: int = 32, hidden: int = 256) -> tuple[nn.Module, nn.Module]:
    """Burgess et al. 2018 (App. A.1): 4 conv layers of 32 channels, 4x4 stride 2, then two
    FC layers of 256; the decoder mirrors it with transposed convolutions. 64x64 images."""
    c, h, w = shape
    _check_shape("conv64", shape, (h, w) == (64, 64), "a model for this image size: conv64 takes "
                 "64x64 images only (conv28 takes 28x28 or 32x32, mlp any size)")
    k = dict(kernel_size=4, stride=2, padding=1)
    trunk = nn.Sequential(
        nn.Conv2d(c, channels, **k), nn.ReLU(),
        nn.Conv2d(channels, channels, **k), nn.ReLU(),
        nn.Conv2d(channels, channels, **k), nn.ReLU(),
        nn.Conv2d(channels, channels, **k), nn.ReLU(),
        nn.Flatten(), nn.Linear(channels * 16, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU())
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, channels * 16), nn.ReLU(),
        nn.Unflatten(1, (channels, 4, 4)),
        nn.ConvTranspose2d(channels, channels, **k), nn.ReLU(),
        nn.ConvTranspose2d(channels, channels, **k), nn.ReLU(),
        nn.ConvTranspose2d(channels, channels, **k), nn.ReLU(),
        nn.ConvTranspose2d(channels, out_channels, **k))
    return Encoder(trunk, hidden, latent_dim), decoder


@MODELS.register("dislib")
def dislib(shape: Sequence[int], latent_dim: int, out_channels: int) -> tuple[nn.Module, nn.Module]:
    """disentanglement_lib's ``conv_encoder`` / ``deconv_decoder`` (Locatello et al. 2019,
    Table 1; the architecture of their 12,800 models), for 64x64 images: conv 32, 32 (4x4,
    stride 2), 64, 64 (2x2, stride 2), FC 256, then the two linear heads of M (one layer of 2M
    here); decoder FC 256, FC 1024 (64x4x4), deconv 64, 32, 32, C (4x4, stride 2). ReLU
    throughout, TensorFlow's "same" padding (64 -> 32 -> 16 -> 8 -> 4). 690,517 parameters for
    one channel, 10 latents and a Bernoulli head."""
    c, h, w = shape
    _check_shape("dislib", shape, (h, w) == (64, 64), "a model for this image size: dislib takes "
                 "64x64 images only (conv28 takes 28x28 or 32x32, mlp any size)")
    k4 = dict(kernel_size=4, stride=2, padding=1)
    k2 = dict(kernel_size=2, stride=2)
    trunk = nn.Sequential(
        nn.Conv2d(c, 32, **k4), nn.ReLU(),
        nn.Conv2d(32, 32, **k4), nn.ReLU(),
        nn.Conv2d(32, 64, **k2), nn.ReLU(),
        nn.Conv2d(64, 64, **k2), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.ReLU())
    decoder = nn.Sequential(
        nn.Linear(latent_dim, 256), nn.ReLU(),
        nn.Linear(256, 1024), nn.ReLU(),
        nn.Unflatten(1, (64, 4, 4)),
        nn.ConvTranspose2d(64, 64, **k4), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, **k4), nn.ReLU(),
        nn.ConvTranspose2d(32, 32, **k4), nn.ReLU(),
        nn.ConvTranspose2d(32, out_channels, **k4))
    return Encoder(trunk, 256, latent_dim), decoder


@MODELS.register("conv28")
def conv28(shape: Sequence[int], latent_dim: int, out_channels: int,
           channels: Sequence[int] = (32, 64), hidden: int = 256) -> tuple[nn.Module, nn.Module]:
    """Two 4x4 stride-2 conv layers and an FC layer, for 28x28 (MNIST) and 32x32 (CIFAR)."""
    c, h, w = shape
    _check_shape("conv28", shape, (h, w) in ((28, 28), (32, 32)),
                 "a model for this image size: conv28 takes "
                 "28x28 or 32x32 images only (conv64 takes 64x64, mlp any size)")
    c1, c2 = channels
    s = h // 4
    k = dict(kernel_size=4, stride=2, padding=1)
    trunk = nn.Sequential(
        nn.Conv2d(c, c1, **k), nn.ReLU(), nn.Conv2d(c1, c2, **k), nn.ReLU(),
        nn.Flatten(), nn.Linear(c2 * s * s, hidden), nn.ReLU())
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, c2 * s * s), nn.ReLU(),
        nn.Unflatten(1, (c2, s, s)),
        nn.ConvTranspose2d(c2, c1, **k), nn.ReLU(), nn.ConvTranspose2d(c1, out_channels, **k))
    return Encoder(trunk, hidden, latent_dim), decoder


@MODELS.register("mlp")
def mlp(shape: Sequence[int], latent_dim: int, out_channels: int,
        hidden: Sequence[int] = (512, 256)) -> tuple[nn.Module, nn.Module]:
    """Fully connected encoder and decoder, for any image size."""
    c, h, w = shape
    n_in, layers = c * h * w, [nn.Flatten()]
    for a, b in zip([n_in, *hidden[:-1]], hidden):
        layers += [nn.Linear(a, b), nn.ReLU()]
    dec: list[nn.Module] = []
    rev = list(reversed(hidden))
    for a, b in zip([latent_dim, *rev[:-1]], rev):
        dec += [nn.Linear(a, b), nn.ReLU()]
    dec += [nn.Linear(rev[-1], out_channels * h * w), nn.Unflatten(1, (out_channels, h, w))]
    return Encoder(nn.Sequential(*layers), hidden[-1], latent_dim), nn.Sequential(*dec)


def build_model(cfg: Mapping[str, Any], shape: Sequence[int],
                out_channels: int) -> tuple[nn.Module, nn.Module]:
    """``(encoder, decoder)`` of the model named by ``cfg`` (the ``model`` node, checked by
    :func:`model_config`) for images of ``shape`` (C, H, W) and a decoder giving
    ``out_channels`` channels. Raises ConfigError naming ``model.<key>``."""
    name = cfg["name"]
    config = model_config(name).validate(cfg, "model", f"model {name}")
    kwargs = {k: getattr(config, k) for k in model_config(name).key_names() if k != "latent_dim"}
    return MODELS.get(name)(tuple(shape), config.latent_dim, out_channels, **kwargs)


# a model in a new file of this package registers itself on import: no line to add here
MODELS.discover()
