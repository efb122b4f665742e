"""Models: disentanglement_lib's architecture (issue 12.4) layer by layer and by its
parameter count, and every model's output shapes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vaesweep.errors import ConfigError
from vaesweep.module import VAEModule
from vaesweep.nn import MODELS, build_model


def module(model: str, shape=(1, 64, 64), head: str = "bernoulli", latent_dim: int = 10):
    return VAEModule({"model": {"name": model, "latent_dim": latent_dim},
                      "likelihood": {"name": head}, "kl": {"name": "beta"}}, shape)


def test_dislib_has_disentanglement_libs_parameter_count():
    # encoder 309,204 + decoder 381,313, as disentanglement_lib's conv_encoder/deconv_decoder
    m = module("dislib")
    assert sum(p.numel() for p in m.parameters()) == 690_517


def test_dislib_layers_are_locatello_et_al_table_1():
    enc, dec = build_model({"name": "dislib", "latent_dim": 10}, (3, 64, 64), 3)
    convs = [(l.in_channels, l.out_channels, l.kernel_size, l.stride)
             for l in enc.modules() if isinstance(l, nn.Conv2d)]
    assert convs == [(3, 32, (4, 4), (2, 2)), (32, 32, (4, 4), (2, 2)),
                     (32, 64, (2, 2), (2, 2)), (64, 64, (2, 2), (2, 2))]
    assert [l.out_features for l in enc.modules() if isinstance(l, nn.Linear)] == [256, 20]
    assert [l.out_features for l in dec.modules() if isinstance(l, nn.Linear)] == [256, 1024]
    deconvs = [(l.in_channels, l.out_channels, l.kernel_size, l.stride)
               for l in dec.modules() if isinstance(l, nn.ConvTranspose2d)]
    assert deconvs == [(64, 64, (4, 4), (2, 2)), (64, 32, (4, 4), (2, 2)),
                       (32, 32, (4, 4), (2, 2)), (32, 3, (4, 4), (2, 2))]
    mu, logvar = enc(torch.zeros(2, 3, 64, 64))
    assert mu.shape == logvar.shape == (2, 10) and dec(mu).shape == (2, 3, 64, 64)


def test_dislib_takes_64x64_images_only():
    with pytest.raises(ConfigError, match="model.name='dislib'.*64x64"):
        module("dislib", shape=(1, 28, 28))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_images_to_codes_and_back(name):
    shape = (1, 28, 28) if name == "conv28" else (1, 64, 64)
    m = module(name, shape, head="gaussian_learned", latent_dim=4)
    mu, logvar = m.encode(torch.zeros(3, *shape))
    assert mu.shape == (3, 4) and m.decode(mu).shape[0] == 3
