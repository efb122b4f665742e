"""Training throughput: vaesweep (Lightning Trainer + MLflow, as `vaesweep` runs it) against
a plain PyTorch loop on the same model, data, batch and optimiser.

Both are timed the same way: wall time between consecutive optimiser-step ends (data
fetching and loop overhead included; the first step is warm-up), with minor page faults and
system CPU time per step from getrusage.

    python benchmarks/bench_train.py                 # conv64 on dSprites and conv28 on 28x28
    python benchmarks/bench_train.py --steps 300 --repeats 3 --models conv64
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides):
    from hydra import compose as hcompose, initialize_config_dir
    import vaesweep.resolvers  # noqa: F401
    with initialize_config_dir(config_dir=str(ROOT / "conf"), job_name="bench"):
        return hcompose(config_name="config", overrides=list(overrides))


def setups(device: str):
    """(label, overrides, data-building function) for each benchmarked case."""
    from vaesweep.data import ImageSet, register_dataset
    from vaesweep.data.base import DATASETS

    if "bench28" not in DATASETS:
        @register_dataset("bench28")
        def bench28(cfg):  # 28x28 binary images: the speed of MNIST-sized data, offline
            g = torch.Generator().manual_seed(0)
            data = (torch.rand(20000, 1, 28, 28, generator=g) > 0.7).to(torch.uint8) * 255
            return ImageSet("bench28", data, (1, 28, 28))
    trainer = "gpu" if device == "cuda" else "cpu"
    return {
        "conv64": ["data=dsprites", "data.subset=20000", "model=conv64", f"trainer={trainer}"],
        "conv28": ["data=mnist", "data.name=bench28", "model=conv28", f"trainer={trainer}"],
    }


def plain_loop(c, steps: int, device: str) -> dict:
    """The same networks, head and loss in a hand-written loop (no Lightning, no logging)."""
    from vaesweep.data import VAEDataModule
    from vaesweep.kl import kl_per_dim
    from vaesweep.module import VAEModule

    torch.manual_seed(c["seed"])
    dm = VAEDataModule(c["data"])
    if device == "cuda":
        dm.imageset = dm.imageset.to(device)
    m = VAEModule(c, dm.imageset.shape).to(device)
    enc, dec, head, kl = m.encoder, m.decoder, m.head, m.loss_terms
    opt = torch.optim.Adam(m.parameters(), lr=c["optim"]["lr"])
    idx, bs = dm.train_idx, c["data"]["batch_size"]
    g = np.random.default_rng(0)
    perm = g.permutation(idx)
    seconds, faults, sys_s, images, last, ru0 = 0.0, 0, 0.0, 0, None, None
    pos = 0
    for step in range(steps + 1):
        if pos + bs > len(perm):
            perm, pos = g.permutation(idx), 0
        x = dm.imageset.batch(perm[pos:pos + bs])
        pos += bs
        mu, logvar = enc(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        t = kl(head.nll(dec(z), x), kl_per_dim(mu, logvar))
        opt.zero_grad(set_to_none=True)
        t.loss.backward()
        opt.step()
        kl.advance()
        if device == "cuda":
            torch.cuda.synchronize()
        now, ru = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        if last is not None:
            seconds += now - last
            images += x.shape[0]
            faults += ru.ru_minflt - ru0.ru_minflt
            sys_s += ru.ru_stime - ru0.ru_stime
        last, ru0 = now, ru
    return {"ips": images / seconds, "faults": faults / steps, "sys_ms": 1000 * sys_s / steps}


def vaesweep_run(c, steps: int) -> dict:
    from vaesweep.train import run_job
    c = dict(c)
    c["trainer"] = {**c["trainer"], "max_steps": steps + 1, "limit_val_batches": 0,
                    "limit_test_batches": 1, "enable_progress_bar": True}
    c["metrics"] = {**c.get("metrics", {}), "enabled": False}
    c["tracking"] = {**c["tracking"], "log_checkpoint": False}
    m = run_job(c)
    return {"ips": m["system/images_per_second"], "faults": m["system/page_faults_per_step"],
            "sys_ms": 1000 * m["system/sys_seconds_per_step"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="timed optimiser steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each (median reported)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--models", nargs="+", default=["conv64", "conv28"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from omegaconf import OmegaConf
    work = tempfile.mkdtemp(prefix="bench-train-")
    os.chdir(work)
    os.environ.setdefault("VAESWEEP_DATA", str(Path(work) / "data"))
    rows = []
    for name in a.models:
        ov = setups(a.device)[name] + [f"data.batch_size={a.batch}", "trainer.enable_progress_bar=true"]
        c = OmegaConf.to_container(compose(ov), resolve=True)
        plain, vs = [], []
        for _ in range(a.repeats):  # alternate, so drifts in machine load hit both alike
            plain.append(plain_loop(c, a.steps, a.device))
            vs.append(vaesweep_run(c, a.steps))
        med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
        rows.append([name, a.batch, a.device, med(plain, "ips"), med(vs, "ips"),
                     med(vs, "ips") / med(plain, "ips"), med(plain, "faults"), med(vs, "faults"),
                     med(plain, "sys_ms"), med(vs, "sys_ms")])
    print(header("Training throughput: vaesweep vs a plain PyTorch loop"))
    print(f"{a.steps} timed steps per run, median of {a.repeats} alternating runs\n")
    print(table(["model", "batch", "device", "plain img/s", "vaesweep img/s", "ratio",
                 "plain faults/step", "vaesweep faults/step", "plain sys ms/step",
                 "vaesweep sys ms/step"], rows))


if __name__ == "__main__":
    main()
