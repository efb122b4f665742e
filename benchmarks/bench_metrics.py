"""How long the structure metrics take on dSprites-sized inputs (issue 4: all of them on
10,000 points in <= 30 s on 2 CPU cores).

    python benchmarks/bench_metrics.py [--points 10000] [--test-points 5000] [--jobs 2] [--dsprites] [--reference]

A synthetic representation of dSprites' factors (shape 3, scale 6, orientation 40, posX 32,
posY 32 classes): 10 latents, five of them noisy copies of the factors (posX mixed with some
posY), five pure noise. MIG uses ``--points`` codes, SAP and DCI ``--points``/``--test-points``;
FactorVAE and beta-VAE run with disentanglement_lib's settings (10,000/5,000 votes or points,
batches of 64) on a synthetic dataset whose "images" are the factor classes, so the table
times the metrics, not an encoder.

``--dsprites`` adds the two sampling scores on real dSprites renders (2.9 million draws, about
0.9 million distinct images after de-duplication) with a cheap image code (centroid, area):
that row is dominated by rendering. ``--reference`` adds disentanglement_lib's DCI
(scikit-learn ``GradientBoostingClassifier`` per factor, several minutes) on the same codes and
prints how far the fast estimator is from it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from common import header, table

from vaesweep.metrics import betavae_score, dci, factorvae_score, mig, sap

SIZES = [3, 6, 40, 32, 32]


class SyntheticFactors:
    """factor_sizes / sample_factors / render, with the factor classes as a (1, 1, 5) image."""

    factor_sizes = SIZES

    def sample_factors(self, n, rng):
        return rng.integers(0, self.factor_sizes, size=(n, len(self.factor_sizes)))

    def render(self, classes):
        return torch.from_numpy(np.asarray(classes, dtype=np.float32)).reshape(len(classes), 1, 1, -1)


def synthetic_code(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = factors / (np.asarray(SIZES) - 1.0)
    codes = np.concatenate([f, rng.standard_normal((len(f), 5))], axis=1)
    codes[:, 3] = 0.8 * f[:, 3] + 0.2 * f[:, 4]
    codes[:, :5] += 0.05 * rng.standard_normal((len(f), 5))
    return codes


def synthetic_represent(seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda images: synthetic_code(images.flatten(1).numpy(), rng)


def centroid_represent(seed: int = 0):
    rng = np.random.default_rng(seed)

    def represent(images):
        x = images[:, 0].double()
        area = x.sum((1, 2)).clamp_min(1)
        ar = torch.arange(x.shape[-1], dtype=torch.float64)
        cx, cy = (x.sum(1) * ar).sum(1) / area, (x.sum(2) * ar).sum(1) / area
        code = torch.stack([cx, cy, area], 1).numpy()
        return np.concatenate([code, rng.standard_normal((len(code), 3))], axis=1)
    return represent


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--test-points", type=int, default=5_000)
    ap.add_argument("--dsprites", action="store_true", help="sampling scores on real dSprites renders")
    ap.add_argument("--reference", action="store_true", help="also disentanglement_lib's DCI (minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=None, help="threads for DCI (default: min(2, cores))")
    args = ap.parse_args()

    import scipy
    import sklearn

    print(header("vaesweep.metrics: structure metrics on dSprites-sized inputs"))
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}; "
          f"load average at start {os.getloadavg()[0]:.1f} (other processes share the cores)")
    rng = np.random.default_rng(args.seed)
    n, m = args.points, args.test_points
    factors = rng.integers(0, SIZES, size=(n + m, len(SIZES)))
    codes = synthetic_code(factors, rng)
    train, test = (codes[:n], factors[:n]), (codes[n:], factors[n:])
    data = SyntheticFactors()

    rows = []
    total_wall = total_cpu = 0.0
    runs = [
        (f"MIG ({n:,} points, 20 bins)", lambda: mig(*train)),
        (f"SAP ({n:,}/{m:,})", lambda: sap(*train, *test)),
        (f"DCI binned GBT ({n:,}/{m:,}, {args.jobs or min(2, os.cpu_count() or 1)} threads)",
         lambda: dci(*train, *test, n_jobs=args.jobs)),
        ("FactorVAE (10,000/5,000 votes x 64)", lambda: factorvae_score(synthetic_represent(), data, args.seed)),
        ("beta-VAE (10,000/5,000 points x 2x64)", lambda: betavae_score(synthetic_represent(), data, args.seed)),
    ]
    for name, fn in runs:
        wall, cpu, value = timed(fn)
        total_wall += wall
        total_cpu += cpu
        shown = value if isinstance(value, float) else ", ".join(f"{k[0].upper()}={v:.3f}" for k, v in value.items())
        rows.append([name, wall, cpu, shown if isinstance(shown, str) else f"{shown:.3f}"])
        print(f"  {name}: {wall:.1f} s", file=sys.stderr, flush=True)
    rows.append(["total (synthetic)", total_wall, total_cpu, ""])

    if args.dsprites:
        from vaesweep.data.dsprites import build_dsprites

        ds = build_dsprites({"subset": 64, "progress": False})
        for name, fn in (("FactorVAE on dSprites renders", factorvae_score),
                         ("beta-VAE on dSprites renders", betavae_score)):
            wall, cpu, value = timed(lambda: fn(centroid_represent(), ds, args.seed))
            rows.append([name, wall, cpu, f"{value:.3f}"])
            print(f"  {name}: {wall:.1f} s", file=sys.stderr, flush=True)

    if args.reference:
        fast = dci(*train, *test)
        wall, cpu, ref = timed(lambda: dci(*train, *test, estimator="sklearn", n_jobs=1))
        diff = ", ".join(f"|d{k[0].upper()}|={abs(fast[k] - ref[k]):.4f}" for k in ref)
        rows.append([f"DCI reference sklearn GBT ({n:,}/{m:,})", wall, cpu,
                     ", ".join(f"{k[0].upper()}={v:.3f}" for k, v in ref.items())])
        rows.append(["binned vs reference", "", "", diff])

    print(table(["metric", "wall s", "CPU s", "value"], rows))


if __name__ == "__main__":
    main()
