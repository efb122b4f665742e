"""GPU throughput: the fast path of conf/trainer/gpu.yaml, option by option, and several
trials per GPU (concurrent processes with a memory share each, against one vectorised
ensemble of models that differ only in their KL weight).

    python benchmarks/bench_gpu.py                     # everything, on the first CUDA device
    python benchmarks/bench_gpu.py --sections options --batches 64 256
    python benchmarks/bench_gpu.py --cpu-smoke         # every code path on CPU, tiny sizes, nothing timed
                                                       # that means anything (for CI and CPU-only machines)

Without a CUDA device (and without --cpu-smoke) it prints the header and "no GPU" and exits 0.

Sections (each prints a table):

* ``options``: training images/s of one trial, conv64 on dSprites and conv28 on 28x28, for a
  plain PyTorch loop (host data copied per batch; data resident on the device) and for
  ``vaesweep`` (run_job, trainer=gpu) with each fast-path option alone and all together:
  ``data_on_device``, ``precision=bf16-mixed``, ``channels_last``, ``compile``, per batch size.
* ``concurrent``: K processes at once, each one vaesweep job with 1/K of the GPU memory
  (what ``hydra/launcher=joblib hydra.launcher.n_jobs=K`` does, vaesweep.job.hardware.gpu_memory_share):
  total images/s on the GPU.
* ``ensemble``: E conv64 VAEs on dSprites trained as one vectorised model (torch.func
  functional_call + vmap over stacked parameters; one Adam over the stacks is E independent
  Adams, Adam being elementwise), each with its own beta_norm, on the same batches, with
  independent initialisations and noise: total images/s (E x batch per step).
* the projection for the disentanglement_lib beta-VAE grid (6 beta x 5 seeds x 300k steps at
  batch 64 = 576M images) from the best total rate of each way.

Timing: wall time between a synchronised start after warm-up steps and a synchronised end
(torch.cuda.synchronize), validation off.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table  # noqa: E402

GRID_IMAGES = 6 * 5 * 300_000 * 64  # disentanglement_lib's beta-VAE grid


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def compose_cfg(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from bench_train import compose, setups
    del setups
    return OmegaConf.to_container(compose(overrides), resolve=True)


def model_overrides(name: str, device: str) -> list[str]:
    from bench_train import setups
    ov = setups("cuda" if device == "cuda" else "cpu")[name]
    return ov if device == "cuda" else [o for o in ov if not o.startswith("trainer=")] + ["trainer=cpu"]


# -- one trial: plain loop ------------------------------------------------------------------
def plain(c: dict, device: str, steps: int, warmup: int, resident: bool, bf16: bool = False,
          channels_last: bool = False, compile_: bool = False) -> float:
    """images/s of a hand-written loop on the same model, head, loss and batches."""
    from vaesweep.data import VAEDataModule
    from vaesweep.kl import kl_per_dim
    from vaesweep.module import VAEModule

    torch.manual_seed(0)
    dm = VAEDataModule(c["data"])
    if resident:
        dm.imageset.to(device)
    m = VAEModule(c, dm.imageset.shape).to(device)
    m.use_fast_path(compile=compile_, channels_last=channels_last)
    opt = torch.optim.Adam(m.parameters(), lr=c["optim"]["lr"])
    bs = c["data"]["batch_size"]
    g = torch.Generator().manual_seed(0)
    idx = torch.as_tensor(dm.train_idx)
    perm, pos = idx[torch.randperm(len(idx), generator=g)], 0
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        if pos + bs > len(perm):
            perm, pos = idx[torch.randperm(len(idx), generator=g)], 0
        x = dm.imageset.batch(perm[pos:pos + bs])
        pos += bs
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            mu, logvar = m.encoder(x)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            t = m.loss_terms(m.head.nll(m.decoder(z), x), kl_per_dim(mu, logvar))
        opt.zero_grad(set_to_none=True)
        t.loss.backward()
        opt.step()
        m.loss_terms.advance()
    sync(device)
    return steps * bs / (time.perf_counter() - t0)


# -- one trial: vaesweep --------------------------------------------------------------------
class SyncedThroughput:
    """A Lightning callback: images/s between a synchronised start after ``warmup`` steps
    and a synchronised end of training."""

    def __new__(cls, device: str, warmup: int):
        from lightning.pytorch.callbacks import Callback

        class _Cb(Callback):
            def __init__(self) -> None:
                self.n, self.t0, self.images, self.ips = 0, None, 0, float("nan")

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                self.n += 1
                if self.n == warmup:
                    sync(device)
                    self.t0 = time.perf_counter()
                elif self.n > warmup:
                    self.images += batch.shape[0]

            def on_train_end(self, trainer, module):
                sync(device)
                if self.t0 is not None and self.images:
                    self.ips = self.images / (time.perf_counter() - self.t0)
        return _Cb()


def vaesweep(c: dict, device: str, steps: int, warmup: int, **fast) -> float:
    from vaesweep.train import run_job
    c = json.loads(json.dumps(c))
    precision = fast.pop("precision", None)
    c["trainer"].update({"max_steps": warmup + steps, "limit_val_batches": 0, "limit_test_batches": 1,
                         "enable_progress_bar": False, "val_check_interval": None, **fast})
    if precision:
        c["trainer"]["precision"] = precision
    c["metrics"] = {**c.get("metrics", {}), "enabled": False}
    c["tracking"] = {**c["tracking"], "log_checkpoint": False}
    cb = SyncedThroughput(device, warmup)
    run_job(c, extra_callbacks=[cb])
    return cb.ips


OPTIONS = [  # (label, function, kwargs)
    ("plain loop, host data copied per batch", "plain", {"resident": False}),
    ("plain loop, data on the device", "plain", {"resident": True}),
    ("vaesweep trainer=gpu as shipped", "vaesweep", {}),
    ("vaesweep, data_on_device=false", "vaesweep", {"data_on_device": False}),
    ("vaesweep + precision=bf16-mixed", "vaesweep", {"precision": "bf16-mixed"}),
    ("vaesweep + channels_last", "vaesweep", {"channels_last": True}),
    ("vaesweep + compile", "vaesweep", {"compile": True}),
    ("vaesweep + bf16 + channels_last + compile", "vaesweep",
     {"precision": "bf16-mixed", "channels_last": True, "compile": True}),
    ("plain loop + bf16 + channels_last + compile, data on the device", "plain",
     {"resident": True, "bf16": True, "channels_last": True, "compile_": True}),
]


def section_options(a, device: str) -> tuple[list, float]:
    rows, best = [], float("nan")
    for name in a.models:
        for bs in a.batches:
            c = compose_cfg(model_overrides(name, device) + [f"data.batch_size={bs}"])
            base = None
            for label, kind, kw in OPTIONS:
                if a.cpu_smoke and (kw.get("compile") or kw.get("compile_")):
                    rows.append([name, bs, label, "skipped (--cpu-smoke: inductor takes minutes on CPU)", ""])
                    continue
                if a.cpu_smoke and kw.get("data_on_device") is None and kind == "vaesweep":
                    kw = {"data_on_device": True, **kw}
                runs = []
                for _ in range(a.repeats):
                    fn = plain if kind == "plain" else vaesweep
                    runs.append(fn(c, device, a.steps, a.warmup, **dict(kw)))
                ips = statistics.median(runs)
                if label == "plain loop, data on the device":
                    base = ips
                if name == "conv64" and bs == 64 and not ips <= best:
                    best = ips
                rows.append([name, bs, label, ips, ips / base if base else ""])
    return rows, best


# -- several trials at once -------------------------------------------------------------------
def worker(spec: str) -> None:
    s = json.loads(spec)
    if s["device"] == "cuda":
        torch.cuda.set_per_process_memory_fraction(s["share"])
    else:
        torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="bench-gpu-worker-"))
    logging.basicConfig(level=logging.WARNING)
    ips = vaesweep(s["cfg"], s["device"], s["steps"], s["warmup"], **s["fast"])
    print("RESULT " + json.dumps({"ips": ips}))


def section_concurrent(a, device: str) -> tuple[list, float]:
    rows, best = [], 0.0
    c = compose_cfg(model_overrides("conv64", device) + ["data.batch_size=64"])
    fast = {"data_on_device": True} if a.cpu_smoke else {}
    for k in a.jobs:
        spec = {"cfg": c, "device": device, "share": 1.0 / k, "steps": a.steps, "warmup": a.warmup,
                "fast": fast}
        # each worker logs to mlflow.db in its own folder (the resolved tracking.uri is relative)
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(k)]
        ips = []
        for p in procs:
            out, err = p.communicate()
            line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
            if p.returncode != 0 or line is None:
                raise SystemExit(f"worker failed:\n{err[-3000:]}")
            ips.append(json.loads(line[7:])["ips"])
        total = sum(ips)
        best = max(best, total)
        rows.append([k, f"1/{k}", f"{min(ips):.0f} .. {max(ips):.0f}", total])
    return rows, best


def build_ensemble(c: dict, device: str, members: int) -> dict:
    """``members`` conv64 VAEs (independent initialisations, beta_norm on a log grid from
    1e-3 to 10, reduction mean) as stacked parameters and one vmapped loss function."""
    import copy

    from torch.func import functional_call, stack_module_state

    from vaesweep.data import VAEDataModule
    from vaesweep.kl import kl_per_dim
    from vaesweep.module import VAEModule

    dm = VAEDataModule(c["data"])
    dm.imageset.to(device)
    shape = dm.imageset.shape
    n_elements = int(np.prod(shape))
    nets = []
    for i in range(members):
        torch.manual_seed(i)  # independent initialisations (the seeds of the grid)
        m = VAEModule(c, shape)
        nets.append(torch.nn.ModuleDict({"encoder": m.encoder, "decoder": m.decoder}).to(device))
    head = VAEModule(c, shape).head.to(device)
    latent = int(c["model"].get("latent_dim", 10))
    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")
    # beta_norm with reduction mean: beta_eff = beta_norm * N / M, gradient scale 1 / N (DESIGN 1)
    beta_eff = torch.logspace(-3, 1, members, device=device) * n_elements / latent

    def part(name, p, b, arg):
        sub = {k[len(name) + 1:]: v for k, v in p.items() if k.startswith(name + ".")}
        bsub = {k[len(name) + 1:]: v for k, v in b.items() if k.startswith(name + ".")}
        return functional_call(base[name], (sub, bsub), (arg,))

    def one(p, b, x, eps, beta):
        mu, logvar = part("encoder", p, b, x)
        z = mu + eps * (0.5 * logvar).exp()
        distortion = head.nll(part("decoder", p, b, z), x).flatten(1).sum(1)
        rate = kl_per_dim(mu, logvar).sum(1)
        return (distortion.mean() + beta * rate.mean()) / n_elements

    return {"dm": dm, "nets": nets, "head": head, "latent": latent, "params": params,
            "buffers": buffers, "beta_eff": beta_eff, "n_elements": n_elements,
            "losses": torch.vmap(one, in_dims=(0, 0, None, 0, 0))}


def check_ensemble(c: dict, device: str) -> None:
    """The vmapped loss of each member is that member's own loss (a self-check)."""
    from vaesweep.kl import kl_per_dim
    e = build_ensemble(c, device, 3)
    x = e["dm"].imageset.batch(e["dm"].train_idx[:8]).to(device)
    eps = torch.randn(3, 8, e["latent"], device=device)
    got = e["losses"](e["params"], e["buffers"], x, eps, e["beta_eff"])
    for i, net in enumerate(e["nets"]):
        mu, logvar = net["encoder"](x)
        z = mu + eps[i] * (0.5 * logvar).exp()
        d = e["head"].nll(net["decoder"](z), x).flatten(1).sum(1).mean()
        r = kl_per_dim(mu, logvar).sum(1).mean()
        want = (d + e["beta_eff"][i] * r) / e["n_elements"]
        assert torch.allclose(got[i], want, rtol=1e-4, atol=1e-6), (i, got[i], want)


def ensemble_rate(c: dict, device: str, members: int, steps: int, warmup: int, bf16: bool) -> float:
    """images/s of ``members`` conv64 VAEs trained as one vmapped model."""
    e = build_ensemble(c, device, members)
    params, buffers, dm = e["params"], e["buffers"], e["dm"]
    leaves = [v.requires_grad_() for v in params.values()]
    opt = torch.optim.Adam(leaves, lr=c["optim"]["lr"])
    bs = c["data"]["batch_size"]
    idx = torch.as_tensor(dm.train_idx, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        x = dm.imageset.batch(idx[torch.randint(len(idx), (bs,), device=device, generator=g)])
        eps = torch.randn(members, bs, e["latent"], device=device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = e["losses"](params, buffers, x, eps, e["beta_eff"]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * bs * members / (time.perf_counter() - t0)


def section_ensemble(a, device: str) -> tuple[list, float]:
    rows, best = [], 0.0
    c = compose_cfg(model_overrides("conv64", device) + ["data.batch_size=64"])
    check_ensemble(c, device)
    for e in a.members:
        for bf16 in (False, True):
            ips = ensemble_rate(c, device, e, a.steps, a.warmup, bf16)
            best = max(best, ips)
            rows.append([e, "bf16 autocast" if bf16 else "fp32", ips, ips / e])
    return rows, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["options", "concurrent", "ensemble"],
                   choices=["options", "concurrent", "ensemble"])
    p.add_argument("--models", nargs="+", default=["conv64", "conv28"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--jobs", nargs="+", type=int, default=[1, 2, 4, 8], help="concurrent processes")
    p.add_argument("--members", nargs="+", type=int, default=[1, 6, 30], help="ensemble sizes")
    p.add_argument("--steps", type=int, default=500, help="timed steps")
    p.add_argument("--warmup", type=int, default=50, help="untimed steps first (compile happens here)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run every path on CPU with tiny sizes (checks the code; the numbers mean nothing)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker)
    print(header("GPU throughput: the fast path and several trials per GPU"))
    if not torch.cuda.is_available() and not a.cpu_smoke:
        print("\nno GPU: torch.cuda.is_available() is False on this machine, so nothing was measured "
              "(bench_gpu.py measures CUDA devices; --cpu-smoke runs its code paths on CPU).")
        return
    device = "cuda" if torch.cuda.is_available() and not a.cpu_smoke else "cpu"
    if a.cpu_smoke:
        a.models, a.batches, a.jobs, a.members = a.models[:2], [16], [1, 2], [1, 3]
        a.steps, a.warmup = min(a.steps, 4), min(a.warmup, 2)
        print("--cpu-smoke: every path on CPU at tiny sizes; the numbers below mean nothing")
    logging.basicConfig(level=logging.WARNING)
    import warnings
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    work = tempfile.mkdtemp(prefix="bench-gpu-")
    os.chdir(work)
    os.environ.setdefault("VAESWEEP_DATA", str(Path(work) / "data"))
    print(f"{a.steps} timed steps after {a.warmup} warm-up steps; validation off\n")
    best = {}
    if "options" in a.sections:
        rows, best["one trial (best fast-path option, conv64 batch 64)"] = section_options(a, device)
        print(table(["model", "batch", "how", "img/s", "vs plain, data on device"], rows) + "\n")
    if "concurrent" in a.sections:
        rows, best["concurrent processes (joblib-style)"] = section_concurrent(a, device)
        print(table(["processes", "memory share each", "img/s per process", "total img/s"], rows) + "\n")
    if "ensemble" in a.sections:
        rows, best["vectorised ensemble"] = section_ensemble(a, device)
        print(table(["members", "precision", "total img/s", "img/s per member"], rows) + "\n")
    rows = [[k, v, GRID_IMAGES / v / 3600 if v > 0 else float("nan")] for k, v in best.items()]
    print("disentanglement_lib beta-VAE grid (30 models x 300k steps x batch 64 = 576M images), "
          "projected from the best total rate of each way:\n")
    print(table(["way", "total img/s", "GPU-hours for the grid"], rows))


if __name__ == "__main__":
    main()
