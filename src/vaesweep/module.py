"""The LightningModule: encoder, decoder, likelihood head and KL weighting, wired per the loss contract (docs/pages/loss-contract.md).

Every run trains on ``scale · mean_batch[D + beta_eff·R]`` and logs D, R, the ELBO and
beta_eff under ``train/*`` and ``val/*`` (docs/pages/metrics.md).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import lightning as L
import torch

from vaesweep.contract import ACTIVE_THRESHOLD, OPTIM_DEFAULTS, kl_per_dim
from vaesweep.kl import LossTerms, build_weighting
from vaesweep.likelihood import build_head
from vaesweep.nn import LATENT_DIM, build_model

#: seed of the reparameterisation noise of validation and test: every validation draws the same
#: z noise, so two validations of the same weights give the same val/elbo and the convergence
#: test (the convergence rule: < 1 % change over the last 20 % of steps) measures training drift, not the
#: sampling noise of a one-sample ELBO (about 1 % on 1,000 MNIST images)
EVAL_NOISE_SEED = 1234

#: the state-dict prefix of the loss (the KL weighting), and the one checkpoints written before
#: ``VAEModule.kl`` was renamed ``loss_terms`` use
LOSS_PREFIX, OLD_LOSS_PREFIX = "loss_terms.", "kl."


def current_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a VAEModule state dict) with the keys of checkpoints written before the
    rename of ``kl`` to ``loss_terms`` renamed, so those checkpoints still load and resume."""
    return {(LOSS_PREFIX + k[len(OLD_LOSS_PREFIX):] if k.startswith(OLD_LOSS_PREFIX) else k): v
            for k, v in state.items()}


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
#: optimisers given ``fused=True`` unless the config says otherwise
FUSED = ("adam", "adamw")


class VAEModule(L.LightningModule):
    """A VAE on images of ``shape`` (C, H, W) configured by the plain-dict config ``cfg``
    (the keys ``model``, ``likelihood``, ``kl`` and ``optim`` of the Hydra config)."""

    def __init__(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> None:
        super().__init__()
        # a plain container, so checkpoints reload under torch.load(weights_only=True)
        self.save_hyperparameters({"cfg": dict(cfg), "shape": list(shape)}, logger=False)
        self.shape = tuple(shape)
        self.n_elements = math.prod(self.shape)
        self.head = build_head(cfg["likelihood"], self.shape)
        self.encoder, self.decoder = build_model(cfg["model"], self.shape,
                                                 self.head.decoder_channels())
        self.latent_dim = int(cfg["model"].get("latent_dim", LATENT_DIM))
        # trainer.max_steps: the unit of the schedules' default lengths (fractions of the run)
        max_steps = (cfg.get("trainer") or {}).get("max_steps")
        #: the KL weighting: called on (distortion per element, KL per dim) it returns the whole
        #: loss with its terms (:class:`~vaesweep.kl.loss.LossTerms`), distortion included
        self.loss_terms = build_weighting(cfg["kl"], self.n_elements, self.latent_dim, max_steps)
        # the keys a config leaves out (all of them when it has no optim) at their one default
        self.optim_cfg = {**OPTIM_DEFAULTS, **dict(cfg.get("optim") or {})}
        self._val_mu: list[torch.Tensor] = []
        self._val_kl: list[torch.Tensor] = []
        self._beta_trace: list[tuple[int, float]] = []
        #: (step, beta_eff, loss, distortion, rate) of the first non-finite step, on the device
        self._first_bad: torch.Tensor | None = None
        self._channels_last = False
        #: the generator of validation's and test's z noise, reseeded at each start
        self._eval_noise: torch.Generator | None = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Loads checkpoints written before ``kl`` was renamed ``loss_terms`` (their keys)."""
        checkpoint["state_dict"] = current_keys(checkpoint["state_dict"])

    # -- the model, usable without a Trainer --------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean, the representation the metrics score."""
        return self.encoder(x)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The head's mean image for the posterior mean of ``x``."""
        return self.head.mean(self.decoder(self.represent(x)))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per example (= −distortion)."""
        return -self.head.nll(self.decoder(z), x).flatten(1).sum(1)

    def terms(self, x: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[LossTerms, torch.Tensor]:
        """The loss terms of batch ``x`` (B, C, H, W) with one reparameterised sample
        z = mu + eps·sigma (Kingma & Welling 2014); ``eps`` is drawn from ``generator`` when
        given (on the module's device), else, inside a validation or test, from its seeded
        generator, else from the global generator. Returns the terms and the posterior
        means mu (B, M)."""
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        mu, logvar = self.encoder(x)
        generator = generator if generator is not None else self._eval_noise
        eps = (torch.randn_like(mu) if generator is None else
               torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype))
        z = mu + eps * (0.5 * logvar).exp()
        nll = self.head.nll(self.decoder(z), x)
        return self.loss_terms(nll, kl_per_dim(mu, logvar)), mu

    # -- opt-in speed-ups (conf/trainer/gpu.yaml, docs/pages/performance.md) ---------------------
    def use_fast_path(self, compile: bool | str = False, channels_last: bool = False) -> "VAEModule":
        """``compile``: ``torch.compile`` the encoder and decoder in place (true, or a mode
        such as ``"max-autotune"``); state_dict keys do not change, so checkpoints stay
        interchangeable. The loss is left eager: beta_eff is a Python float that changes with
        schedules, and a compiled loss would recompile for each value. ``channels_last``:
        NHWC memory for the convolution weights and the input batches."""
        if channels_last:
            self.to(memory_format=torch.channels_last)
            self._channels_last = True
        if compile:
            kwargs = {} if compile is True else {"mode": str(compile)}
            self.encoder.compile(**kwargs)
            self.decoder.compile(**kwargs)
        return self

    # -- training -------------------------------------------------------------------------
    def training_step(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        t, _ = self.terms(x)
        log_now = self._log_this_step()
        if self.device.type == "cpu":
            if not torch.isfinite(t.loss):
                # stop at once: a NaN/inf loss only poisons the weights from here on
                self._raise_non_finite(self.global_step, t.loss, t.distortion.mean(),
                                       t.rate.mean(), t.beta_eff)
        else:
            # on an accelerator, reading the flag every step would wait for the device at
            # every step: remember the first bad step there, read it when logging anyway
            self._watch_finite(t)
            if log_now:
                self.check_finite()
        self.loss_terms.observe(t)
        self._beta_trace.append((self.global_step, t.beta_eff))
        if log_now:
            self._log_terms("train", t, on_step=True)
        return t.loss

    def _log_this_step(self) -> bool:
        """Whether this step's ``train/*`` terms go through ``self.log``: Lightning writes
        step values to the logger only every ``log_every_n_steps`` steps, and each
        ``self.log`` call costs about 0.5 ms of Python, so only those steps (and the last
        one, for ``callback_metrics``) call it."""
        trainer = self._trainer
        if trainer is None:
            return True
        step = self.global_step + 1
        return (step % max(1, trainer.log_every_n_steps) == 0 or step == trainer.max_steps
                or trainer.should_stop)

    @staticmethod
    def _raise_non_finite(step: Any, loss: Any, distortion: Any, rate: Any, beta_eff: Any) -> None:
        raise FloatingPointError(
            f"non-finite loss at step {int(step)}: loss={float(loss)}, distortion={float(distortion)}, "
            f"rate={float(rate)}, beta_eff={float(beta_eff)} (lower optim.lr, or check that the "
            "data's range suits the likelihood head, e.g. [0, 1] for bernoulli)")

    def _watch_finite(self, t: LossTerms) -> None:
        """Records, on the device and without waiting for it, the first step whose loss is
        not finite, with its terms (read by :meth:`check_finite`)."""
        terms = torch.stack([t.loss.detach().float(), t.distortion.detach().float().mean(),
                             t.rate.detach().float().mean()])
        head = terms.new_empty(2)
        head[0], head[1] = float(self.global_step), float(t.beta_eff)  # fills, not copies
        values = torch.cat([head, terms])
        if self._first_bad is None or self._first_bad.device != values.device:
            self._first_bad = torch.full_like(values, float("nan"))
        fresh = ~torch.isfinite(values[2]) & torch.isnan(self._first_bad[0])
        self._first_bad = torch.where(fresh, values, self._first_bad)

    def check_finite(self) -> None:
        """Raises FloatingPointError if a step recorded by :meth:`_watch_finite` had a
        non-finite loss (on CPU the check is made at every step instead)."""
        if self._first_bad is not None and not bool(torch.isnan(self._first_bad[0])):
            step, beta_eff, loss, distortion, rate = self._first_bad.tolist()
            self._first_bad = None
            self._raise_non_finite(step, loss, distortion, rate, beta_eff)

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def on_validation_start(self) -> None:
        self.check_finite()
        self._eval_noise = self._fresh_eval_noise()

    def on_test_start(self) -> None:
        self._eval_noise = self._fresh_eval_noise()

    def on_validation_end(self) -> None:
        self._eval_noise = None  # training, and terms() called from outside, draw as before

    def on_test_end(self) -> None:
        self._eval_noise = None

    def _fresh_eval_noise(self) -> torch.Generator:
        """A generator on the module's device seeded with EVAL_NOISE_SEED: each validation
        (and the test) draws the same z noise for the same batches, and leaves the global
        generator, hence the training's noise, untouched."""
        return torch.Generator(device=self.device).manual_seed(EVAL_NOISE_SEED)

    def on_train_end(self) -> None:
        self.check_finite()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.loss_terms.advance()  # schedules and controllers step on optimiser steps only

    def validation_step(self, x: torch.Tensor, batch_idx: int) -> None:
        t, mu = self.terms(x)
        self._val_mu.append(mu.detach())
        self._val_kl.append(t.kl_per_dim.detach().sum(0))
        self._log_terms("val", t, on_step=False)

    def on_validation_epoch_end(self) -> None:
        if not self._val_mu:
            return
        mu = torch.cat(self._val_mu)
        n = mu.shape[0]
        kl_dim = torch.stack(self._val_kl).sum(0) / n
        self._val_mu.clear(), self._val_kl.clear()
        # Burda et al. 2016: unit u is active when Cov_x(E_q[z_u|x]) > 0.01
        metrics = {"val/active_units": float((mu.var(0, correction=0) > ACTIVE_THRESHOLD).sum()) if n > 1 else 0.0}
        metrics.update({f"val/kl_dim_{j}": float(v) for j, v in enumerate(kl_dim)})
        sigma = self.head.sigma()
        if sigma is not None:
            metrics["val/sigma"] = float(sigma.detach().float().mean())
        implied = self.head.implied_sigma(self.loss_terms.beta_eff())
        if implied is not None:
            metrics["val/implied_sigma"] = implied
        self.log_dict(metrics)

    def test_step(self, x: torch.Tensor, batch_idx: int) -> None:
        t, _ = self.terms(x)
        self._log_terms("test", t, on_step=False)

    def _log_terms(self, stage: str, t: LossTerms, on_step: bool) -> None:
        b = t.distortion.shape[0]
        values = {f"{stage}/loss": t.loss.detach(), f"{stage}/distortion": t.distortion.detach().mean(),
                  f"{stage}/rate": t.rate.detach().mean(), f"{stage}/elbo": t.elbo.detach().mean()}
        if stage != "train":
            values[f"{stage}/beta_eff"] = torch.tensor(t.beta_eff)
        self.log_dict(values, on_step=on_step, on_epoch=not on_step, batch_size=b,
                      prog_bar=False)
        if stage == "train":
            self.log("loss", values["train/loss"], prog_bar=True, logger=False, batch_size=b)

    def pop_beta_trace(self) -> list[tuple[int, float]]:
        """The beta_eff of every optimiser step since the last call (logged in batches)."""
        trace, self._beta_trace = self._beta_trace, []
        return trace

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = dict(self.optim_cfg)
        name = cfg.pop("name")
        cls = OPTIMIZERS[name]
        if name in FUSED and self.device.type in ("cpu", "cuda"):
            # one kernel over all parameters instead of a handful per tensor: the Adam step of
            # conv28 takes 2 ms instead of 10 on CPU (docs/pages/performance.md); optim.fused=false
            # gives PyTorch's default implementation (equal up to float rounding)
            cfg.setdefault("fused", True)
        return cls(self.parameters(), **cfg)
