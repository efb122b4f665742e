"""Sweep throughput: trials per hour of the `quick` study, with Hydra's basic launcher (one
trial after another in one process) and with the joblib launcher (2 trials at a time).

    python benchmarks/bench_sweep.py                    # reduced budget: 4 trials x 100 steps
    python benchmarks/bench_sweep.py --full             # quick as shipped (sweeps/quick.yaml)
    python benchmarks/bench_sweep.py --trials 4 --steps 200 --launchers basic

Each launcher runs the real command line (`python -m vaesweep -m +sweep=quick ...`) in a fresh
folder (new mlflow.db and optuna.db) as a subprocess; the wall time covers everything from
the process start to its exit. Per-trial times come from the child runs in MLflow (start
to end of each run), and "between trials" is the rest of the wall time divided by the
trials: process start, imports, the study, the parent run and the sweeper's bookkeeping.
With joblib each job gets half the cores (vaesweep.job.hardware.cpu_threads). The reduced budget keeps
quick's other settings (metrics=fast, 8 validation and 16 test batches, 20,000 images) and
validates at half the steps and at the end, as quick does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"],
}


def run_sweep(launcher: str, trials: int, steps: int | None, extra: list[str], data: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-sweep-{launcher}-"))
    args = [sys.executable, "-m", "vaesweep", "-m", "+sweep=quick", f"hydra.sweeper.n_trials={trials}",
            *LAUNCHERS[launcher], *extra]
    if steps is not None:
        args += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(1, steps // 2)}"]
    env = {**os.environ, "VAESWEEP_DATA": str(data)}
    env.pop("MLFLOW_TRACKING_URI", None)
    t = time.perf_counter()
    res = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{launcher}: exit {res.returncode}\n{res.stderr[-3000:]}")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    exp = client.get_experiment_by_name("vaesweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    done = [r for r in children if r.info.status == "FINISHED"]
    per_trial = [(r.info.end_time - r.info.start_time) / 1000 for r in done]
    ips = [r.data.metrics.get("system/images_per_second", float("nan")) for r in done]
    return {"wall": wall, "trials": len(done), "failed": len(children) - len(done),
            "trial_s": statistics.median(per_trial) if per_trial else float("nan"),
            "ips": statistics.median(ips) if ips else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="quick as shipped (n_trials and max_steps of sweeps/quick.yaml)")
    p.add_argument("--trials", type=int, default=4, help="trials per sweep (reduced budget)")
    p.add_argument("--steps", type=int, default=100, help="trainer.max_steps per trial (reduced budget)")
    p.add_argument("--launchers", nargs="+", default=list(LAUNCHERS), choices=list(LAUNCHERS))
    p.add_argument("overrides", nargs="*", help="extra overrides for every sweep")
    a = p.parse_args()
    from omegaconf import OmegaConf
    shipped = OmegaConf.load(ROOT / "sweeps" / "quick.yaml")
    q_trials, q_steps = shipped.hydra.sweeper.n_trials, shipped.trainer.max_steps
    trials, steps = (q_trials, None) if a.full else (a.trials, a.steps)
    data = Path(tempfile.mkdtemp(prefix="bench-sweep-data-"))
    rows = []
    for launcher in a.launchers:
        r = run_sweep(launcher, trials, steps, a.overrides, data)
        between = (r["wall"] - r["trial_s"] * r["trials"] / (2 if launcher == "joblib" else 1)) / max(1, r["trials"])
        rows.append([launcher, f"{r['trials']} (+{r['failed']} failed)" if r["failed"] else r["trials"],
                     steps or q_steps, f"{r['wall']:.0f}", f"{3600 * r['trials'] / r['wall']:.0f}",
                     f"{r['trial_s']:.1f}", f"{between:.1f}", f"{r['ips']:.0f}"])
    print(header("Sweep throughput: the quick study"))
    budget = f"quick as shipped ({q_trials} trials x {q_steps} steps)" if a.full else \
        f"reduced budget: {trials} trials x {steps} steps (quick: {q_trials} x {q_steps}), other settings as quick"
    print(f"{budget}; extra overrides: {' '.join(a.overrides) or 'none'}; load average at the end: "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + "\n")
    print(table(["launcher", "trials", "steps", "wall (s)", "trials/hour", "median trial (s)",
                 "rest per trial (s)", "median train img/s per job"], rows))
    print("\nrest per trial: (wall - trial time) / trials; with joblib the trial time is halved, "
          "as two run at once.")


if __name__ == "__main__":
    main()
