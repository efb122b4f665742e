"""Images the sampling scores encode at metrics=default on dSprites: without a shared cache
(each score de-duplicates its own draws, as before issue 13) and with one CodeCache for all.

    python benchmarks/bench_encodes.py          # about a minute; counts, machine-independent

Each image is rendered as a 1-pixel stand-in and "encoded" by a counter, so only the draws
are real (disentanglement_lib's default sizes: MIG/SAP/DCI 10,000 + 5,000 fresh factor
vectors; FactorVAE 10,000 variance images and 15,000 votes of 64; beta-VAE 15,000 points of
2 x 64). The count is what an encoder pays at those sizes, whatever the machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table  # noqa: E402


def main() -> None:
    import numpy as np
    import torch

    from vaesweep.data.dsprites import FACTOR_SIZES, N_IMAGES
    from vaesweep.metrics import CodeCache, betavae_score, factorvae_score
    from vaesweep.metrics._arrays import codes_for_classes
    from vaesweep.metrics.evaluate import DEFAULTS as S

    class Grid:  # dSprites' factor grid, images replaced by their flat index
        factor_sizes = FACTOR_SIZES

        def sample_factors(self, n, rng):
            return rng.integers(0, FACTOR_SIZES, size=(int(n), len(FACTOR_SIZES)), dtype=np.int64)

        def render(self, classes):
            flat = np.ravel_multi_index(tuple(np.asarray(classes).T), FACTOR_SIZES)
            return torch.from_numpy(flat.astype(np.float32)).reshape(-1, 1, 1, 1)

    counts: dict[str, int] = {}
    current = [""]

    def represent(x):  # a code that reads the image (its index), so no latent is pruned
        counts[current[0]] = counts.get(current[0], 0) + len(x)
        v = x.flatten(1)
        return torch.cat([v, (v * 7919) % 1000], 1)

    data = Grid()
    fv = dict(batch_size=S["factorvae_batch_size"], num_train=S["factorvae_num_train"],
              num_eval=S["factorvae_num_eval"], num_variance_estimate=S["factorvae_num_variance"])
    bv = dict(batch_size=S["betavae_batch_size"], num_train=S["betavae_num_train"], num_eval=S["betavae_num_eval"])
    draws = {"mig/sap/dci": S["num_points"] + S["num_test_points"],
             "factorvae_score": fv["num_variance_estimate"] + (fv["num_train"] + fv["num_eval"]) * fv["batch_size"],
             "betavae_score": 2 * (bv["num_train"] + bv["num_eval"]) * bv["batch_size"]}
    rows = []
    for label, shared in (("each score de-duplicates its own draws (before)", False), ("one CodeCache (now)", True)):
        cache = CodeCache(represent, data, chunk_size=1 << 16) if shared else None
        for name in draws:
            current[0] = f"{label}:{name}"
            rng = np.random.default_rng(1)
            if name == "mig/sap/dci":
                codes_for_classes(represent, data, data.sample_factors(draws[name], rng), chunk_size=1 << 16,
                                  cache=cache)
            elif name == "factorvae_score":
                factorvae_score(represent, data, 2, chunk_size=1 << 16, cache=cache, **fv)
            else:
                betavae_score(represent, data, 3, chunk_size=1 << 16, cache=cache, **bv)
        total = sum(counts.get(f"{label}:{n}", 0) for n in draws)
        rows.append([label, *(f"{counts.get(f'{label}:{n}', 0):,}" for n in draws), f"{total:,}"])
    rows.append(["draws (images the scores ask for)", *(f"{d:,}" for d in draws.values()), f"{sum(draws.values()):,}"])
    print(header("Images encoded by the sampling scores, metrics=default, dSprites"))
    print(f"grid: {N_IMAGES:,} distinct images\n")
    print(table(["", *draws, "total"], rows))


if __name__ == "__main__":
    main()
