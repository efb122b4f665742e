"""``vaesweep convert``: the beta_eff and beta_norm of a VAE loss as practitioners write it.

A loss ``A·rec_red + B·kl_red`` (reconstruction summed or averaged over the N = C·H·W
elements of an example, KL summed or averaged over the M latents) is, up to the constant
factor A/rec_div, the loss contract's ``D + beta_eff·R`` (docs/pages/loss-contract.md) with

    beta_eff = (B / kl_div) / (A / rec_div)      rec_div = N for a mean, 1 for a sum
                                                 kl_div  = M for a mean, 1 for a sum
    beta_norm = beta_eff · M / N                 (Higgins et al. 2017, App. A.6)

The command prints both, the vaesweep overrides that train the same loss, the regime to
expect, and what the committed study results (``sweeps/results/*/runs.csv``) measured for
the same N and M.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import NoReturn, Sequence

from vaesweep.errors import ConfigError, VaesweepError, number
from vaesweep.kl.loss import REDUCTIONS, beta_norm_of, gradient_scale, loss_beta_eff

RESULTS_DIR = Path(__file__).resolve().parents[2] / "sweeps" / "results"
#: beta_eff within this relative distance of 1 is "at the ELBO"
AT_ELBO_RTOL = 0.1
#: beta_eff at or above this is "far above" the ELBO's weight (an order of magnitude): a rule
#: of thumb, replaced by measurements where a committed study has the same N and M
FAR_ABOVE = 10.0

DESCRIPTION = """\
Translate a VAE loss written as

    loss = A * rec_red + B * kl_red

into vaesweep's terms. rec_red is the reconstruction term of one example (e.g. binary
cross-entropy or a Gaussian NLL) summed (--rec sum) or averaged (--rec mean) over its
N = C*H*W elements; kl_red is KL(q(z|x) || p(z)) summed (--kl sum) or averaged (--kl mean)
over the M latents. A and B are the weights in front of them (--rec-weight, --kl-weight).
How the batch is reduced does not matter: both terms share it.

It prints
  beta_eff  = (B/kl_div) / (A/rec_div), with rec_div = N for a mean (else 1) and kl_div = M
              for a mean (else 1): the loss is (A/rec_div) * (D + beta_eff * R) with D and R
              summed over elements and latents (docs/pages/loss-contract.md);
  beta_norm = beta_eff * M / N (Higgins et al. 2017, App. A.6); the ELBO is beta_eff = 1,
              i.e. beta_norm = M/N;
the vaesweep overrides that train the same loss, the regime to expect (at the ELBO, below
it, above it, or far above it where posterior collapse is likely), and what the committed
study results (sweeps/results/*/runs.csv) measured for the same N and M, where there are
any."""

EPILOG = """\
examples (the Keras VAE tutorials on 28x28 MNIST with 2 latents):
  # BCE averaged over pixels, times 28*28; KL averaged over latents -> beta_eff = 0.5
  vaesweep convert --shape 1,28,28 --latents 2 --rec mean --rec-weight 784 --kl mean
  # the same without the x28*28 -> beta_eff = 392 (the posterior collapses)
  vaesweep convert --shape 1,28,28 --latents 2 --rec mean --kl mean
  # KL summed over latents (the older example) -> beta_eff = 1 (with x784), 784 (without)
  vaesweep convert --shape 1,28,28 --latents 2 --rec mean --rec-weight 28*28 --kl sum

Weights may be written as products or quotients of numbers (28*28, 1/784). If your
reconstruction term is a mean squared error rather than an NLL, D is that MSE sum: the
fixed-sigma Gaussian head's NLL is MSE_sum/(2 sigma^2) + const, so beta_eff here is the
weight for sigma^2 = 1/2 (likelihood=gaussian likelihood.sigma=0.7071)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (vaesweep's ``ConfigError`` style), not usage + error."""

    def error(self, message: str) -> NoReturn:
        raise VaesweepError(f"{message} (see vaesweep convert --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vaesweep convert", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", required=True, metavar="C,H,W|d",
                   help="shape of one example: channels, height, width (e.g. 1,28,28), N = C*H*W; "
                        "or the number of features d of a table (e.g. 30), N = d")
    p.add_argument("--latents", required=True, metavar="M", help="number of latent dimensions M")
    p.add_argument("--rec", required=True, metavar="sum|mean",
                   help="how rec_red reduces over the N elements of an example")
    p.add_argument("--rec-weight", default="1", metavar="A",
                   help="the weight A on the reconstruction term (default 1; e.g. 784 or 28*28)")
    p.add_argument("--kl", required=True, metavar="sum|mean",
                   help="how kl_red reduces over the M latents")
    p.add_argument("--kl-weight", default="1", metavar="B",
                   help="the weight B on the KL term (default 1; 0: no KL term)")
    p.add_argument("--results", default=str(RESULTS_DIR), metavar="DIR",
                   help="committed study results to cite (default: the repository's sweeps/results)")
    return p


_NUM = r"\s*[0-9.]+(?:[eE][+-]?[0-9]+)?\s*"


def parse_weight(flag: str, text: str, *, positive: bool) -> float:
    """A weight written as a number or a product/quotient of numbers (``28*28``, ``1/784``)."""
    allowed = (f"a {'positive' if positive else 'non-negative'} finite number, or a product or "
               "quotient of numbers such as 28*28 or 1/784")
    if not re.fullmatch(rf"{_NUM}(?:[*/]{_NUM})*", text or ""):
        raise ConfigError(flag, text, allowed)
    parts = re.split(r"([*/])", text)
    try:
        value = float(parts[0])
        for op, operand in zip(parts[1::2], parts[2::2]):
            value = value * float(operand) if op == "*" else value / float(operand)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(flag, text, allowed) from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(flag, text, allowed)
    return value


def parse_shape(text: str) -> tuple[int, ...]:
    """``C,H,W`` (an image) or ``d`` (a table of d features, as data=array holds an (n, d)
    array): the shape of one example, whose product is N. Raises ConfigError (--shape)."""
    allowed = ("three positive whole numbers C,H,W (e.g. 1,28,28), or one, the number of "
               "features d of a table (e.g. 30)")
    parts = (text or "").replace("x", ",").split(",")
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts):
        raise ConfigError("--shape", text, allowed)
    shape = tuple(int(p) for p in parts)
    if min(shape) < 1:
        raise ConfigError("--shape", text, allowed)
    return shape  # type: ignore[return-value]


def parse_reduction(flag: str, text: str) -> str:
    if text not in REDUCTIONS:
        raise ConfigError(flag, text, REDUCTIONS)
    return text


def regime(beta_eff: float) -> str:
    """The regime of a weight relative to the ELBO's beta_eff = 1, in words."""
    if beta_eff == 0:
        return ("no KL term (beta_eff = 0): a plain autoencoder, not a VAE; the rate is not "
                "penalised and the latent space is not regularised")
    if abs(beta_eff - 1) <= AT_ELBO_RTOL:
        return "at the ELBO (beta_eff = 1 within 10 %): the loss is the negative ELBO"
    if beta_eff < 1:
        return (f"below the ELBO's weight ({beta_eff:.3g}x): more rate and less distortion than "
                "the ELBO's optimum; towards beta_eff = 0 an autoencoder with a weak prior")
    if beta_eff < FAR_ABOVE:
        return (f"above the ELBO's weight ({beta_eff:.3g}x, the beta-VAE regime): less rate, more "
                "distortion; latents that carry little information may switch off")
    return (f"far above the ELBO's weight ({beta_eff:.3g}x, at least {FAR_ABOVE:g}x): posterior "
            "collapse is likely (no active unit: every input gets the same reconstruction); "
            f"the {FAR_ABOVE:g}x boundary is a rule of thumb, not a measurement")


def overrides(beta_eff: float, n: int, m: int) -> list[str]:
    """The vaesweep overrides that train on D + beta_eff·R with M latents (the beta_eff table of docs/pages/loss-contract.md)."""
    bn = beta_norm_of(beta_eff, n, m)
    return [f"model.latent_dim={m} kl=beta_norm kl.beta_norm={bn:.6g}   (either reduction)",
            f"model.latent_dim={m} kl=beta kl.reduction=sum kl.beta={beta_eff:.6g}",
            f"model.latent_dim={m} kl=beta kl.reduction=mean kl.beta={bn:.6g}"]


def measured(results: Path, n: int, m: int, beta_eff: float) -> list[str]:
    """What the committed studies measured at the weights nearest ``beta_eff`` for the same
    N and M; lines saying that there is nothing to cite otherwise."""
    if not results.is_dir():
        return [f"no committed study results at {results}"]
    studies = sorted(p for p in results.iterdir() if p.is_dir())
    tables = [s / "runs.csv" for s in studies if (s / "runs.csv").is_file()]
    without = [s.name for s in studies if not (s / "runs.csv").is_file()]
    lines: list[str] = []
    import pandas as pd

    found = False
    for table in tables:
        df = pd.read_csv(table)
        need = {"n_elements", "latent_dim", "beta_eff", "active_units", "state"}
        if not need <= set(df.columns):
            continue
        df = df[(df["state"] == "COMPLETE") & (df["n_elements"] == n) & (df["latent_dim"] == m)
                & (df["beta_eff"] > 0)]
        if "kl.schedule.name" in df:
            # a typed loss is a constant weight: warm-ups end elsewhere (the annealing study)
            df = df[df["kl.schedule.name"].isna() | (df["kl.schedule.name"] == "constant")]
        if df.empty:
            continue
        study = table.parent.name
        weights = sorted(df["beta_eff"].unique())
        logs = [abs(math.log(w / beta_eff)) if beta_eff > 0 else w for w in weights]
        nearest = weights[min(range(len(weights)), key=logs.__getitem__)]
        near = [w for w in weights if w == nearest or (beta_eff > 0 and 0.5 <= w / beta_eff <= 2)]
        data = ", ".join(sorted(map(str, df["data"].dropna().unique()))) if "data" in df else "?"
        if not 0.25 <= nearest / beta_eff <= 4:
            continue  # this study measured nothing near the weight
        far = "" if 0.5 <= nearest / beta_eff <= 2 else "nearest measured, "
        found = True
        for w, head, g in ((w, h, g) for w in near for h, g in
                           df[df["beta_eff"] == w].groupby(df.get("head", "?"), sort=True)):
            dead = int((g["active_units"] == 0).sum())
            conv = ""
            if "converged" in g and g["converged"].notna().any():
                n_conv = int((g["converged"] == True).sum())  # noqa: E712 (a column of objects)
                conv = f"; {n_conv} of {len(g)} converged"
            if "schedule_unfinished" in g and g["schedule_unfinished"].notna().any():
                conv += f"; {int(g['schedule_unfinished'].notna().sum())} schedule(s) unfinished"
            lines.append(f"{study} ({data}, {head}): {far}at beta_eff = {w:.4g}, {len(g)} run(s): "
                         f"active units {_span(g['active_units'])} of {m}, collapsed in {dead}, "
                         f"distortion {_span(g['distortion'])} nats, rate {_span(g['rate'])} nats"
                         f"{conv}")
    if not found:
        have = ", ".join(p.parent.name for p in tables) or "none"
        lines.append(f"no committed study has N = {n} and M = {m} near this weight "
                     f"(studies with a runs.csv: {have}"
                     + (f"; without one: {', '.join(without)}" if without else "")
                     + "): the regime above follows from beta_eff alone")
    return lines


def _span(values) -> str:
    lo, hi = float(values.min()), float(values.max())
    return f"{lo:.4g}" if lo == hi else f"{lo:.4g} to {hi:.4g}"


def convert(shape: tuple[int, ...], latents: int, rec: str, kl: str, rec_weight: float,
            kl_weight: float, results: Path = RESULTS_DIR) -> list[str]:
    """The lines ``vaesweep convert`` prints (see the module docstring)."""
    n = math.prod(shape)
    beta_eff = loss_beta_eff(n, latents, rec, kl, rec_weight, kl_weight)
    beta_norm = beta_norm_of(beta_eff, n, latents)
    scale = rec_weight / (n if rec == "mean" else 1)
    same = [r for r in REDUCTIONS if math.isclose(gradient_scale(r, n), scale, rel_tol=1e-9)]
    rec_txt = f"D/{n} (mean over N = {n} elements)" if rec == "mean" else f"D (sum over N = {n})"
    kl_txt = f"R/{latents} (mean over M = {latents} latents)" if kl == "mean" else \
        f"R (sum over M = {latents})"
    lines = [
        f"loss = {rec_weight:.6g} * {rec_txt} + {kl_weight:.6g} * {kl_txt}",
        f"     = {scale:.6g} * (D + beta_eff * R)",
        f"beta_eff = {beta_eff:.6g}",
        f"beta_norm = {beta_norm:.6g}   (beta_eff * M/N; the ELBO, beta_eff = 1, is beta_norm = "
        f"M/N = {latents / n:.6g})",
        f"regime: {regime(beta_eff)}",
        "vaesweep overrides for the same D + beta_eff * R:",
        *(f"  {o}" for o in overrides(beta_eff, n, latents)),
        ("  your gradient scale (" + f"{scale:.6g}" + ") is kl.reduction=" + same[0] + "'s"
         if same else
         f"  your loss is {scale:.6g} times kl.reduction=sum's (a constant factor: Adam's steps "
         "hardly change, plain SGD's learning rate is scaled by it)"),
        "measured (committed study results):",
        *(f"  {line}" for line in measured(Path(results), n, latents, beta_eff)),
    ]
    return lines


def convert_main(argv: Sequence[str]) -> int:
    a = parser().parse_args(list(argv))
    shape = parse_shape(a.shape)
    latents = int(number("--latents", a.latents, 1, integer=True))
    rec = parse_reduction("--rec", a.rec)
    kl = parse_reduction("--kl", a.kl)
    rec_weight = parse_weight("--rec-weight", a.rec_weight, positive=True)
    kl_weight = parse_weight("--kl-weight", a.kl_weight, positive=False)
    print("\n".join(convert(shape, latents, rec, kl, rec_weight, kl_weight, Path(a.results))))
    return 0
