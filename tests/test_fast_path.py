"""The fast path (docs/pages/performance.md): device-resident batches, the opt-in speed-ups of
conf/trainer/gpu.yaml, the deferred finiteness check, sparse step logging, the allocator
setting and the in-process data cache. GPU-only behaviour is exercised on its CPU path; no
test times anything."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from conftest import SMOKE, compose
from vaesweep.data import ImageSet, VAEDataModule
from vaesweep.data import loaders
from vaesweep.errors import ConfigError
from vaesweep.module import VAEModule


pytestmark = pytest.mark.usefixtures("one_thread")


def small_set(n: int = 300) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    return ImageSet("small", data, (1, 8, 8))


CFG = {"model": {"name": "mlp", "hidden": [16]}, "likelihood": {"name": "bernoulli"},
       "kl": {"name": "beta", "beta": 1.0}, "optim": {"name": "adam", "lr": 1e-3}}


def fit(dm: VAEDataModule, steps: int, **trainer) -> tuple[VAEModule, L.Trainer]:
    torch.manual_seed(0)
    module = VAEModule(CFG, dm.shape)
    t = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0, **trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(module, datamodule=dm)
    return module, t


# -- device-resident batches ------------------------------------------------------------------
def test_device_batches_are_the_dataloader_batches_in_the_same_order():
    imageset = small_set()
    cfg = {"name": "small", "batch_size": 32, "eval_batch_size": 50, "seed": 3}
    host = VAEDataModule(cfg, imageset)
    device = VAEDataModule(cfg, imageset)
    device.data_on_device = True
    pairs = [(host.train_dataloader(), device.train_dataloader()),
             (host.val_dataloader(), device.val_dataloader()),
             (host.test_dataloader(), device.test_dataloader())]
    assert isinstance(pairs[0][1], loaders.DeviceBatches)
    for a, b in pairs:
        assert len(a) == len(b)
        torch.manual_seed(1)
        batches_a, after_a = list(a), torch.rand(1)
        torch.manual_seed(1)
        batches_b, after_b = list(b), torch.rand(1)
        assert len(batches_a) == len(batches_b)
        assert all(torch.equal(x, y) for x, y in zip(batches_a, batches_b))
        # both leave the global generator (the reparameterisation noise) in the same state
        assert torch.equal(after_a, after_b)
    loader = device.train_dataloader()
    assert not torch.equal(next(iter(loader)), next(iter(loader))), "every epoch has the same order"


def test_training_on_device_batches_matches_the_dataloader_path_exactly():
    imageset = small_set()
    cfg = {"name": "small", "batch_size": 32, "seed": 0}
    a, _ = fit(VAEDataModule(cfg, imageset), steps=12)  # more than one epoch (8 batches)
    dm = VAEDataModule(cfg, imageset)
    dm.data_on_device = True
    b, _ = fit(dm, steps=12)
    params_a, params_b = dict(a.named_parameters()), dict(b.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, p in params_a.items():
        assert torch.equal(p, params_b[name]), name


def test_setup_moves_the_images_only_when_asked_or_to_an_accelerator():
    dm = VAEDataModule({"name": "small", "batch_size": 32}, small_set())
    cpu = torch.device("cpu")
    assert not dm._wants_device(cpu)  # auto on CPU: the DataLoader path
    dm.data_on_device = True
    assert dm._wants_device(cpu)
    dm.data_on_device = False
    assert not dm._wants_device(torch.device("meta"))
    dm.data_on_device = "auto"
    assert dm._wants_device(torch.device("meta"))  # an accelerator other than CUDA


# -- opt-in speed-ups ---------------------------------------------------------------------------
def test_gpu_trainer_config_is_accepted_and_its_fast_path_keys_are_checked():
    from omegaconf import OmegaConf

    from vaesweep.job.checks import check_job
    from vaesweep.job.hardware import fast_path
    c = OmegaConf.to_container(compose(["trainer=gpu"]), resolve=True)
    check_job(c)
    trainer = dict(c["trainer"])
    fast = fast_path(trainer)
    assert set(fast) == {"compile", "channels_last", "data_on_device"}
    assert not set(fast) & set(trainer), "fast-path keys must not reach lightning.Trainer"
    for key, bad in (("compile", "fastest"), ("channels_last", "yes"), ("data_on_device", 1)):
        c["trainer"][key] = bad
        with pytest.raises(ConfigError, match=f"trainer.{key}"):
            check_job(c)
        c["trainer"][key] = fast[key]


def test_channels_last_trains_and_keeps_the_checkpoint_keys():
    module = VAEModule({**CFG, "model": {"name": "conv28"}}, (3, 32, 32))
    keys = list(module.state_dict())
    module.use_fast_path(channels_last=True)
    conv = next(m for m in module.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.rand(4, 3, 32, 32)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    t, _ = module.terms(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    t.loss.backward()
    assert torch.isfinite(t.loss) and list(module.state_dict()) == keys


def test_compile_is_in_place_so_checkpoints_keep_their_keys():
    module = VAEModule(CFG, (1, 8, 8))
    keys = list(module.state_dict())
    module.use_fast_path(compile=True)
    assert module.encoder._compiled_call_impl is not None
    assert module.decoder._compiled_call_impl is not None
    assert list(module.state_dict()) == keys


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="inductor takes minutes to compile even a tiny model on a CPU-only machine")
def test_compiled_model_gives_the_eager_loss():
    torch.manual_seed(0)
    module = VAEModule(CFG, (1, 8, 8)).cuda()
    x = torch.rand(16, 1, 8, 8, device="cuda")
    torch.manual_seed(1)
    eager = module.terms(x)[0].loss
    module.use_fast_path(compile=True)
    torch.manual_seed(1)
    compiled = module.terms(x)[0].loss
    assert torch.allclose(eager, compiled, rtol=1e-4, atol=1e-4)


# -- finiteness and logging ---------------------------------------------------------------------
class Poison(VAEModule):
    """Its loss becomes NaN from optimiser step ``bad_from`` on."""

    bad_from = 3

    def terms(self, x):
        t, mu = super().terms(x)
        if self.global_step >= self.bad_from:
            t.loss = t.loss * float("nan")
        return t, mu


def test_a_non_finite_loss_stops_training_at_once_on_cpu():
    dm = VAEDataModule({"name": "small", "batch_size": 32}, small_set())
    module = Poison(CFG, dm.shape)
    t = L.Trainer(accelerator="cpu", devices=1, max_steps=10, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.fit(module, datamodule=dm)
    assert t.global_step == 3


def test_the_deferred_check_reports_the_first_bad_step_and_its_terms(monkeypatch):
    from vaesweep.kl import LossTerms
    module = VAEModule(CFG, (1, 8, 8))
    for step, loss in enumerate([1.0, 1.0, float("inf"), float("nan"), 1.0]):
        monkeypatch.setattr(VAEModule, "global_step", property(lambda self, s=step: s))
        module._watch_finite(LossTerms(torch.tensor(loss), torch.full((4,), 2.0),
                                       torch.full((4,), 0.5), torch.zeros(4, 10), 1.5))
    with pytest.raises(FloatingPointError,
                       match=r"at step 2: loss=inf, distortion=2.0, rate=0.5, beta_eff=1.5"):
        module.check_finite()
    module.check_finite()  # reported once


def test_train_terms_go_through_self_log_only_on_logged_steps(monkeypatch):
    calls = []
    original = VAEModule._log_terms

    def spy(self, stage, t, on_step):
        if stage == "train":
            calls.append(self.global_step)
        return original(self, stage, t, on_step)
    monkeypatch.setattr(VAEModule, "_log_terms", spy)
    _, trainer = fit(VAEDataModule({"name": "small", "batch_size": 32}, small_set()), steps=7,
                     log_every_n_steps=3)
    assert calls == [2, 5, 6]  # steps 3 and 6 (Lightning writes those) and the last one
    assert "train/loss" in trainer.callback_metrics


# -- process and job settings -------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_tuned_allocator_stops_refaulting_memory_at_every_step():
    code = textwrap.dedent("""
        import resource, sys, torch
        torch.set_num_threads(1)
        if sys.argv[1] == "tuned":
            from vaesweep.job.hardware import tune_allocator
            tune_allocator()
        from vaesweep.nn import build_model
        enc, dec = build_model({"name": "conv64"}, (1, 64, 64), 1)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()])
        x = torch.rand(32, 1, 64, 64)
        def step():
            mu, logvar = enc(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(dec(mu), x) + logvar.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        step(), step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            step()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    per_step = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                             env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        per_step[mode] = float(out.stdout.split()[-1])
    if per_step["default"] < 1000:
        pytest.skip(f"this C library keeps freed memory by itself: {per_step}")
    assert per_step["tuned"] * 10 < per_step["default"], per_step


def test_the_imageset_is_reused_only_for_the_same_data(tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "_last_imageset", None)
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "a"))
    cfg = {"name": "digits", "batch_size": 16}
    first = VAEDataModule(cfg).imageset
    assert VAEDataModule({**cfg, "batch_size": 32, "val_fraction": 0.2}).imageset is first
    other = VAEDataModule({**cfg, "seed": 1}).imageset
    assert other is not first
    monkeypatch.setenv("VAESWEEP_DATA", str(tmp_path / "b"))
    assert VAEDataModule({**cfg, "seed": 1}).imageset is not other


def test_progress_bar_is_added_once_and_only_when_shown():
    from lightning.pytorch.callbacks import TQDMProgressBar

    from vaesweep.job.callbacks import SparseProgressBar, progress_bar
    assert progress_bar({"enable_progress_bar": False}) == []
    assert progress_bar({"enable_progress_bar": True}, [TQDMProgressBar()]) == []
    (bar,) = progress_bar({"enable_progress_bar": True, "log_every_n_steps": 7})
    assert isinstance(bar, SparseProgressBar) and bar.every == 7


def test_a_job_on_device_batches_runs_end_to_end(workdir):
    from omegaconf import OmegaConf

    from vaesweep.train import run_job
    c = OmegaConf.to_container(compose([*SMOKE, "metrics.enabled=false"]), resolve=True)
    c["trainer"]["data_on_device"] = True
    metrics = run_job(c)
    assert np.isfinite(metrics["test/loss"]) and metrics["system/images_per_second"] > 0
