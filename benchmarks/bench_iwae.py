"""IWAE bound at k = 100 (metrics=default): decoder pass size against speed, on CPU.

    python benchmarks/bench_iwae.py                  # 160 images, conv64 + Bernoulli on dSprites
    python benchmarks/bench_iwae.py --images 80 --threads 1

`evaluate_model` feeds `iwae_nll` chunks of `iwae_max_samples // iwae_k` = 40 images (their
seeds fix the samples), and `iwae_nll` sends the k x 40 (sample, image) pairs through the
decoder in passes of at most `max_samples` pairs: on CPU, `iwae.CPU_PASS_PAIRS`. This
script times:

* one pass over k x B for larger chunks (B = all the images: the "fewer, larger decoder
  batches" option; its samples differ, as its chunks do),
* the 40-image chunks with passes of 4,000 pairs (before CPU_PASS_PAIRS) and smaller ones,
  checking that the bound is bit-identical whatever the pass size.

The model is conv64 with random weights (the cost of a pass does not depend on the weights)
and glibc's allocator as a vaesweep job sets it (vaesweep.job.hardware.tune_allocator).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=160, help="test images (default 160; metrics=default has 1,000)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args()
    import numpy as np
    import torch
    import torch.nn.functional as F

    if a.threads:
        torch.set_num_threads(a.threads)
    import vaesweep.metrics.iwae as iw
    from vaesweep.data.dsprites import render_classes, FACTOR_SIZES
    from vaesweep.nn import conv64
    from vaesweep.job.hardware import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    enc, dec = conv64((1, 64, 64), 10, 1)
    enc.eval(), dec.eval()

    def log_likelihood(x, z):
        return -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").flatten(1).sum(1)
    rng = np.random.default_rng(0)
    classes = np.stack([rng.integers(s, size=a.images) for s in FACTOR_SIZES], 1)
    x = torch.from_numpy(render_classes(classes)).float().unsqueeze(1)
    default_cap = iw.CPU_PASS_PAIRS

    def run(chunk: int, cap: int) -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        with torch.no_grad():
            values = torch.cat([iw.iwae_nll(enc, log_likelihood, x[i:i + chunk], a.k, seed=n, max_samples=cap)
                                for n, i in enumerate(range(0, a.images, chunk))])
        return time.perf_counter() - t, values

    chunk = max(1, 4096 // a.k)  # evaluate_model's chunk at metrics=default
    cases = [(f"one pass over k x {a.images} ({a.k * a.images:,} pairs)", a.images, 10**9),
             (f"{chunk}-image chunks, one pass of {a.k * chunk:,} pairs (before)", chunk, a.k * chunk)]
    cases += [(f"{chunk}-image chunks, passes of <= {c:,} pairs" + (" (now)" if c == default_cap else ""), chunk, c)
              for c in (2048, 1024, 512, 256, 128)]
    rows, ref = [], None
    for label, ch, cap in cases:
        seconds, values = run(ch, cap)
        same = "-"
        if ch == chunk:
            ref = values if ref is None else ref
            same = "yes" if torch.equal(values, ref) else f"no (max diff {float((values - ref).abs().max()):.2g})"
        rows.append([label, f"{seconds:.1f}", f"{a.images / seconds:.1f}", f"{1000 * seconds / a.images:.1f}", same])
    print(header(f"IWAE bound, k = {a.k}, conv64 + Bernoulli on {a.images} dSprites images"))
    print("load average at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + "\n")
    print(table(["decoder passes", "seconds", "images/s", "s per 1,000 images", "bound identical to 'before'"], rows))


if __name__ == "__main__":
    main()
