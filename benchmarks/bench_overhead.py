"""Per-trial overhead: the time a training job spends before its first optimiser step and
after its last one, broken down by phase, at the `quick` study's settings.

    python benchmarks/bench_overhead.py                        # 1 cold + 3 warm jobs, fast + default metrics
    python benchmarks/bench_overhead.py --jobs 5 --metrics fast  # skip the (minutes-long) default metrics
    python benchmarks/bench_overhead.py --threads 1            # a busy machine: one torch thread

Each job is `vaesweep.train.run_job` on `+sweep=quick`'s config (since 2026-11-30: mnist_5k,
MLP, batch 128; before: dSprites subset 20,000, conv64, batch 64) with
`trainer.max_steps=--steps` and one validation at the last step, as quick has. The tables in
RESULTS.md for a dSprites conv64 model (the default-size evaluation) pass the old setting:

    python benchmarks/bench_overhead.py --jobs 1 --metrics default -- data=dsprites \
        model=conv64 data.subset=20000 data.batch_size=64 '~model.hidden'
 Phases are timed by wrapping the functions
`run_job` calls (nothing in the package is changed). The first job of a process pays the
imports, the MLflow database creation and the first data build; the later jobs (median shown)
are what each further trial of a sweep pays in a process that is already running (the basic
launcher runs every trial in one process; joblib reuses its worker processes).

`evaluate_model` is timed apart, on the last job's trained model, for each `--metrics`
setting, with its own per-metric breakdown: the jobs themselves run with `metrics.enabled=false`.
A fresh interpreter's import time (`import vaesweep.train`) is measured in a subprocess.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def import_seconds() -> float:
    code = ("import time; t = time.perf_counter(); import vaesweep.train, vaesweep.cli; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


class Phases:
    """Seconds per phase of the current job, filled by wrappers and a callback."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.marks: dict[str, float] = {}
        self.in_fit = False

    def wrap(self, owner, attr: str, label) -> None:
        fn = getattr(owner, attr)
        phases = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                name = label() if callable(label) else label
                phases.t[name] += time.perf_counter() - start
        setattr(owner, attr, timed)


def instrument(ph: Phases):
    """Wraps the functions run_job calls; returns the callback that marks the training steps."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    import vaesweep.job.checks as jc
    import vaesweep.train as vt
    from vaesweep.data import VAEDataModule
    from vaesweep.module import VAEModule
    from vaesweep.tracking import TrackedRun

    # run_job calls these through vaesweep.train's names, prepare through vaesweep.job.checks'
    for mod in (vt, jc):
        ph.wrap(mod, "resolve", "config: resolve + checks")
        ph.wrap(mod, "check_job", "config: resolve + checks")
    ph.wrap(jc, "check_store", "MLflow: store check")
    ph.wrap(vt, "git_commit", "git commit lookup")
    ph.wrap(VAEDataModule, "__init__", "data: ImageSet + split")
    ph.wrap(VAEModule, "__init__", "model: build")
    ph.wrap(TrackedRun, "__init__", "MLflow: client + create run")
    ph.wrap(TrackedRun, "log_params", "MLflow: params + config.yaml")
    ph.wrap(TrackedRun, "log_text", "MLflow: params + config.yaml")
    ph.wrap(L.Trainer, "__init__", "Trainer: construction")
    ph.wrap(L.Trainer, "test", "test: Trainer.test")
    ph.wrap(vt, "log_pictures", "pictures: 3 figures -> MLflow")
    ph.wrap(L.Trainer, "save_checkpoint",
            lambda: "checkpoint: last.ckpt at train end" if ph.in_fit else "checkpoint: final.ckpt save")
    ph.wrap(TrackedRun, "log_artifact", "MLflow: checkpoint artifact")
    ph.wrap(TrackedRun, "log_metrics", "MLflow: final metrics")
    ph.wrap(TrackedRun, "__exit__", "MLflow: run end")

    class Marks(Callback):
        def __init__(self) -> None:
            self.n = 0

        def mark(self, name: str) -> None:
            ph.marks.setdefault(name, time.perf_counter())

        def on_fit_start(self, trainer, module):
            ph.in_fit = True
            self.mark("fit_start")

        def on_train_start(self, trainer, module):
            self.mark("train_start")

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.mark("first_batch_start")

        def on_train_batch_end(self, trainer, module, *args):
            now = time.perf_counter()
            self.n += 1
            if self.n == 1:
                ph.marks["first_step_end"] = now
            if self.n == 2:
                ph.marks["second_step_end"] = now
            ph.marks["last_step_end"] = now

        def on_validation_start(self, trainer, module):
            ph.marks["val_start"] = time.perf_counter()

        def on_validation_end(self, trainer, module):
            ph.marks["val_end"] = time.perf_counter()

        def on_fit_end(self, trainer, module):
            ph.marks["fit_end"] = time.perf_counter()
            ph.in_fit = False
    return Marks


SETUP = ["config: resolve + checks", "MLflow: store check", "git commit lookup", "data: ImageSet + split",
         "model: build", "MLflow: client + create run", "MLflow: params + config.yaml", "Trainer: construction",
         "Trainer.fit: setup to first batch", "first step (warm-up, one step of compute)"]
TEARDOWN = ["final validation (limit_val_batches)", "checkpoint: last.ckpt at train end", "Trainer.fit: rest",
            "test: Trainer.test", "MLflow: final metrics", "pictures: 3 figures -> MLflow",
            "checkpoint: final.ckpt save", "MLflow: checkpoint artifact", "MLflow: run end"]


def one_job(c: dict, Marks) -> tuple[dict[str, float], object]:
    from vaesweep.train import run_job
    import vaesweep.train as vt

    ph = PH
    ph.t.clear(), ph.marks.clear()
    captured = {}
    orig_pictures = vt.log_pictures

    def keep(run, module, x, kl_dim):  # the trained model, for evaluate_model afterwards
        captured["module"] = module
        return orig_pictures(run, module, x, kl_dim)
    vt.log_pictures = keep
    t0 = time.perf_counter()
    try:
        run_job(c, extra_callbacks=[Marks()])
    finally:
        vt.log_pictures = orig_pictures
    t_end = time.perf_counter()
    m, t = ph.marks, dict(ph.t)
    t["Trainer.fit: setup to first batch"] = m["first_batch_start"] - m["fit_start"]
    t["first step (warm-up, one step of compute)"] = m["first_step_end"] - m["first_batch_start"]
    t["steady step (for scale)"] = (m["last_step_end"] - m["second_step_end"]) / max(1, c["trainer"]["max_steps"] - 2)
    val = m.get("val_end", 0) - m.get("val_start", 0) if m.get("val_start", 0) > m["last_step_end"] else 0.0
    t["final validation (limit_val_batches)"] = val
    t["Trainer.fit: rest"] = (m["fit_end"] - m["last_step_end"]) - val - t.get("checkpoint: last.ckpt at train end", 0)
    t["= before the first step"] = m["first_step_end"] - t0
    t["= after the last step"] = t_end - m["last_step_end"]
    accounted_setup = sum(t.get(k, 0.0) for k in SETUP)
    accounted_tear = sum(t.get(k, 0.0) for k in TEARDOWN)
    t["other (before)"] = t["= before the first step"] - accounted_setup
    t["other (after)"] = t["= after the last step"] - accounted_tear
    return t, captured.get("module")


def time_metrics(module, dm_cfg: dict, metrics_cfg: dict, seed: int) -> dict[str, float]:
    """evaluate_model on ``module`` with ``metrics_cfg``: total and per-metric seconds."""
    from vaesweep.data import VAEDataModule
    from vaesweep.metrics.evaluate import evaluate_model

    records: dict[str, float] = {}

    class Grab(logging.Handler):
        def emit(self, record):
            if record.msg == "metrics: %s in %.1f s":
                records[str(record.args[0])] = float(record.args[1])
    lg = logging.getLogger("vaesweep.metrics.evaluate")
    h = Grab()
    lg.addHandler(h)
    old = lg.level
    lg.setLevel(logging.INFO)
    try:
        dm = VAEDataModule(dm_cfg)
        t = time.perf_counter()
        evaluate_model(module, dm.imageset, dm.test_idx, metrics_cfg, seed)
        records["= evaluate_model total"] = time.perf_counter() - t
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)
    return records


PH = Phases()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=4, help="jobs in one process: the first is cold (default 4)")
    p.add_argument("--steps", type=int, default=20, help="trainer.max_steps of each job (quick: see sweeps/quick.yaml)")
    p.add_argument("--metrics", nargs="*", default=["fast", "default"], choices=["fast", "default"],
                   help="metric settings to time evaluate_model with (none: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.subset=5000")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    work = tempfile.mkdtemp(prefix="bench-overhead-")
    os.chdir(work)
    os.environ.setdefault("VAESWEEP_DATA", str(Path(work) / "data"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    t_import = import_seconds()
    t = time.perf_counter()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from omegaconf import OmegaConf

    from bench_train import compose
    Marks = instrument(PH)
    t_import_here = time.perf_counter() - t
    t = time.perf_counter()
    cfg = compose(["+sweep=quick", f"trainer.max_steps={a.steps}", f"trainer.val_check_interval={a.steps}",
                   "metrics.enabled=false", *a.overrides])
    t_compose = time.perf_counter() - t
    c = OmegaConf.to_container(cfg, resolve=True)

    runs = []
    module = None
    for _ in range(a.jobs):
        r, module = one_job(c, Marks)
        runs.append(r)

    metric_runs = {}
    for setting in a.metrics:
        mc = OmegaConf.to_container(compose(["+sweep=quick", f"metrics={setting}"]), resolve=True)["metrics"]
        mc["enabled"] = True
        metric_runs[setting] = time_metrics(module, c["data"], mc, int(c["seed"]))

    cold, warm = runs[0], runs[1:] or runs[:1]
    med = lambda k: statistics.median(r.get(k, 0.0) for r in warm)  # noqa: E731
    rows = [["(once per process) import vaesweep.train, fresh interpreter", f"{t_import:.2f}", "-"],
            ["(once per process) Hydra compose of +sweep=quick", f"{t_compose:.2f}", "-"]]
    rows += [["before: " + k, f"{cold.get(k, 0):.3f}", f"{med(k):.3f}"] for k in SETUP + ["other (before)"]]
    rows += [["**" + "before the first step (job start -> first step end)" + "**",
              f"**{cold['= before the first step']:.2f}**", f"**{med('= before the first step'):.2f}**"]]
    rows += [["after: " + k, f"{cold.get(k, 0):.3f}", f"{med(k):.3f}"] for k in TEARDOWN + ["other (after)"]]
    rows += [["**" + "after the last step, metrics off (last step end -> job end)" + "**",
              f"**{cold['= after the last step']:.2f}**", f"**{med('= after the last step'):.2f}**"]]
    rows += [["(scale) one steady training step", f"{cold['steady step (for scale)']:.3f}",
              f"{med('steady step (for scale)'):.3f}"]]

    print(header("Per-trial overhead of a vaesweep job (quick study settings)"))
    print(f"config: +sweep=quick trainer.max_steps={a.steps} {' '.join(a.overrides)}; "
          f"{a.jobs} jobs in one process; load average at the end: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + "\n")
    print(table(["phase", "first job (s)", f"later jobs, median of {len(warm)} (s)"], rows))
    for setting, rec in metric_runs.items():
        print(f"\nevaluate_model, metrics={setting} (on the last job's model, dSprites factors rendered "
              "on the fly):\n")
        print(table(["metric", "seconds"], [[k, f"{v:.2f}"] for k, v in rec.items()]))
    print("\nafter the last step, with metrics: the 'after' total above plus evaluate_model's total.")


if __name__ == "__main__":
    main()
