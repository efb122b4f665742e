"""Bad input, through the real entry point: one clear error naming the key, the value and what
is allowed; a non-zero exit code; no MLflow run left RUNNING; no Optuna study changed.

The cases are the "Bad input" table of docs/pages/reliability.md. They run ``vaesweep.cli.main`` in this process
(a fresh interpreter per case would cost ~10 s of imports each); ``test_train_e2e.py`` pins
the same behaviour through a fresh process.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import ROOT, run_cli, search_runs
from faults import read_only_dir  # noqa: F401  (fixture)

# small and quick: errors come before training, but the data is built to check shapes
BASE = ["trainer=smoke", "data.subset=64", "data.batch_size=16", "metrics.enabled=false",
        "threads=1"]
SWEEP = ["-m", "+sweep=quick", "trainer.max_steps=2", "data.subset=64", "data.batch_size=16",
         "metrics.enabled=false", "threads=1", "hydra.sweeper.n_trials=1"]
# a single-objective study of its own (the template study has two objectives)
SINGLE = ["study.name=single", "objective=[test/distortion]", "hydra.sweeper.direction=[minimize]"]
# an Optuna sweep of its own, on the command line (`quick` sets QMC-only sampler keys)
OPTUNA = ["-m", "hydra/sweeper=vaesweep_optuna", "study.name=other", "hydra.sweeper.study_name=other",
          "objective=[test/distortion,test/rate]", "hydra.sweeper.direction=[minimize,minimize]",
          "kl.beta_norm=interval(0.001,1)", *SWEEP[2:]]
# the same, its search space given by each case
OWN_SPACE = [a for a in OPTUNA if not a.startswith("kl.beta_norm=")]
CLOSED_PORT = 9  # discard: nothing listens there, a connection is refused at once


def main(args: list[str]) -> tuple[int, str]:
    """``vaesweep ARGS`` in this process: (exit code, stderr). The stores default to absolute
    paths in the working directory: MLflow caches a store per URI for the life of the process,
    and a cached relative ``sqlite:///mlflow.db`` would stay in an earlier test's folder."""
    code, _, err = main_out(args)
    return code, err


def main_out(args: list[str]) -> tuple[int, str, str]:
    """:func:`main`, with what the run printed on stdout too (Hydra's console log)."""
    from hydra.core.global_hydra import GlobalHydra

    from vaesweep.cli import main as cli_main

    from vaesweep.cli import SUBCOMMANDS

    if args and args[0] != "sweep" and args[0] not in SUBCOMMANDS:
        keys = {a.split("=", 1)[0].lstrip("+") for a in args}
        args = [*args, *[f"{k}=sqlite:///{Path.cwd() / f}" for k, f in
                         (("tracking.uri", "mlflow.db"), ("study.storage", "optuna.db"))
                         if k not in keys]]
    GlobalHydra.instance().clear()
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            cli_main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    GlobalHydra.instance().clear()
    return code, out.getvalue(), err.getvalue()


# -- the state that must not change ---------------------------------------------------------
@pytest.fixture(scope="module")
def template_study(tmp_path_factory) -> Path:
    """An optuna.db holding the `quick` study with one finished trial (a beta_norm interval
    wider than quick's, a range Optuna stores beside it, and quick's schedule choices)."""
    path = tmp_path_factory.mktemp("study") / "optuna.db"
    study = optuna.create_study(study_name="quick", storage=f"sqlite:///{path}",
                                directions=["minimize", "minimize"])
    study.set_user_attr("objectives", ["test/distortion", "test/rate"])
    study.add_trial(optuna.trial.create_trial(
        params={"kl.beta_norm": 0.1, "kl/schedule": "constant"},
        distributions={"kl.beta_norm": optuna.distributions.FloatDistribution(1e-3, 10, log=True),
                       "kl/schedule": optuna.distributions.CategoricalDistribution(
                           ("constant", "linear", "sigmoid"))},
        values=[100.0, 5.0]))
    return path


def study_state(db: Path) -> list:
    storage = f"sqlite:///{db}"
    state = []
    for s in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        state.append((s.study_name, [d.name for d in study.directions], study.user_attrs,
                      [(t.number, t.state.name, t.values, t.params, t.user_attrs)
                       for t in study.trials]))
    return state


@pytest.fixture
def cwd(workdir, template_study):
    shutil.copy(template_study, workdir / "optuna.db")
    before = study_state(workdir / "optuna.db")
    yield workdir
    assert study_state(workdir / "optuna.db") == before, "the Optuna study changed"
    db = workdir / "mlflow.db"
    if db.exists():
        running = [r.info.run_id for r in search_runs(f"sqlite:///{db}")
                   if r.info.status == "RUNNING"]
        assert not running, f"MLflow runs left RUNNING: {running}"


def check(code: int, err: str, needles: list[str], exit_code: int | None = None) -> None:
    assert code != 0, err
    if exit_code is not None:
        assert code == exit_code, err
    assert "Traceback" not in err, err[-3000:]
    for n in needles:
        assert n in err, f"{n!r} not in:\n{err[-3000:]}"


# -- files ------------------------------------------------------------------------------------
def truncated_npz(folder: Path) -> Path:
    from vaesweep.data.dsprites import PUBLISHED_NAME
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PUBLISHED_NAME
    n = 64
    np.savez(path, imgs=np.zeros((n, 64, 64), np.uint8),
             latents_classes=np.zeros((n, 6), np.int64), latents_values=np.zeros((n, 6)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return folder


def idx(dims: tuple[int, ...], magic: bytes | None = None) -> bytes:
    head = magic or bytes([0, 0, 8, len(dims)])
    return head + struct.pack(f">{len(dims)}I", *dims) + bytes(int(np.prod(dims)))


def mnist_wrong_magic(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 32), ("t10k", 16)):
        magic = b"\x12\x34\x56\x78" if split == "train" else None
        (raw / f"{split}-images-idx3-ubyte").write_bytes(idx((n, 28, 28), magic))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(idx((n,)))
    return root


class Evil:
    """Unpickling this runs code: a checkpoint must never be loaded with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- the cases --------------------------------------------------------------------------------
ALLOWED_NUMBER = "allowed is a number in"
# (id, arguments, what stderr names, exit code or None for "non-zero")
CASES = [
    ("beta negative", ["kl=beta", "kl.beta=-1"], ["kl.beta=-1", "allowed is a number in [0, inf]"], 2),
    ("beta_norm negative", ["kl.beta_norm=-0.1"], ["kl.beta_norm=-0.1", "[0, inf]"], 2),
    ("beta NaN", ["kl=beta", "kl.beta=nan"], ["kl.beta=nan", ALLOWED_NUMBER], 2),
    ("beta_norm inf", ["kl.beta_norm=inf"], ["kl.beta_norm=inf", ALLOWED_NUMBER], 2),
    ("beta string", ["kl=beta", "kl.beta=high"], ["kl.beta='high'", ALLOWED_NUMBER], 2),
    ("beta_norm string", ["kl.beta_norm=abc"], ["kl.beta_norm='abc'", ALLOWED_NUMBER], 2),
    ("lr zero", ["optim.lr=0"], ["optim.lr=0", "(0, inf]"], 2),
    ("batch_size zero", ["data.batch_size=0"], ["data.batch_size=0", "allowed is"], 2),
    ("sigma zero", ["likelihood=gaussian", "likelihood.sigma=0"],
     ["likelihood.sigma=0", "(0, inf]"], 2),
    ("seed negative", ["seed=-1"], ["seed=-1", "whole number"], 2),
    ("unknown head", ["likelihood=nope"],
     ["Could not find 'likelihood/nope'", "Available options", "bernoulli"], 1),
    ("unknown head name", ["likelihood.name=nope"], ["likelihood.name='nope'", "'bernoulli'"], 2),
    ("unknown schedule", ["kl/schedule=nope"],
     ["Could not find 'kl/schedule/nope'", "cyclical"], 1),
    ("unknown controller", ["kl=nope"], ["Could not find 'kl/nope'", "geco", "controlvae"], 1),
    ("unknown controller name", ["kl.name=pid"], ["kl.name='pid'", "'geco'"], 2),
    ("unknown dataset", ["data=nope"], ["Could not find 'data/nope'", "dsprites"], 1),
    ("unknown model", ["model=nope"], ["Could not find 'model/nope'", "conv64"], 1),
    ("reduction avg", ["kl.reduction=avg"], ["kl.reduction='avg'", "'sum', 'mean'"], 2),
    ("latent_dim zero", ["model.latent_dim=0"], ["model.latent_dim=0", "allowed is"], 2),
    ("latent_dim negative", ["model.latent_dim=-3"], ["model.latent_dim=-3", "allowed is"], 2),
    ("image size conv64", ["data=digits", "model=conv64"], ["model.name='conv64'", "64"], 2),
    ("image size conv28", ["data=digits", "model=conv28"], ["model.name='conv28'", "28"], 2),
    ("unknown objective", ["objective=[val/nope]"], ["objective='val/nope'", "val/distortion"], 2),
    ("unknown key", ["kl.betta=1"], ["kl.betta", "not in struct"], 1),
    ("unknown trainer key", ["trainer.max_stepz=5"], ["trainer.max_stepz", "not in struct"], 1),
    ("malformed tracking URI", ["tracking.uri=mlflow.db"],
     ["tracking.uri='mlflow.db'", "sqlite:///mlflow.db"], 2),
    ("unreachable tracking DB", [f"tracking.uri=postgresql://u@127.0.0.1:{CLOSED_PORT}/db"],
     ["tracking.uri='postgresql://u@127.0.0.1:9/db'", "reachable, writable"], 2),
    ("unreachable tracking server", [f"tracking.uri=http://127.0.0.1:{CLOSED_PORT}"],
     ["tracking.uri='http://127.0.0.1:9'", "reachable, writable"], 2),
    ("ckpt_path last, none", ["ckpt_path=last"], ["ckpt_path='last'", "checkpoints/last.ckpt"], 2),
    ("ckpt_path missing", ["ckpt_path=/nonexistent/last.ckpt"],
     ["ckpt_path='/nonexistent/last.ckpt'", "does not exist"], 2),
    ("unknown sweep", ["-m", "+sweep=nope"], ["Could not find 'sweep/nope'", "quick"], 1),
    ("unknown sweep command", ["sweep", "nope"], ["sweep='nope'", "quick"], 2),
    # the studies' own variables (issue 11): the error names the value where it was given
    ("study variable: keras_kl", ["-m", "+sweep=keras_scaling", "keras_kl=avg"],
     ["kl.beta='${loss_beta_eff:", "got 'avg'", "keras_kl='avg'"], 2),
    ("study head preset", ["-m", "+sweep=likelihoods", "+head=nope"],
     ["Could not find 'head/nope'", "sigma_vae"], 1),
    # a study's grid replaced by one bad value on the command line: every job has it, so the
    # sweep stops before any run (it warned, then failed every trial and exited 0)
    ("study grid replaced by one bad value", ["-m", "+sweep=beta_norm_grid", "kl.beta_norm=-1"],
     ["kl.beta_norm=-1", "[0, inf]"], 2),
    ("sweep: bad value for every job", [*SWEEP, "kl.reduction=avg"],
     ["kl.reduction='avg'", "'sum', 'mean'"], 2),
    ("sweep: malformed storage URL", [*SWEEP, "study.storage=optuna.db"],
     ["hydra.sweeper.storage='optuna.db'", "sqlite:///optuna.db"], 2),
    ("sweep: unreachable storage", [*SWEEP, f"study.storage=postgresql://u@127.0.0.1:{CLOSED_PORT}/db"],
     ["hydra.sweeper.storage='postgresql://u@127.0.0.1:9/db'", "reachable database", "Connection refused"], 2),
    ("sweep: resumed with other objectives",
     [*SWEEP, "metrics.enabled=[mse]", "objective=[test/mse,test/rate]"],
     ["objective=['test/mse', 'test/rate']", "['test/distortion', 'test/rate']"], 2),
    ("sweep: resumed with other directions", [*SWEEP, "hydra.sweeper.direction=[maximize,minimize]"],
     ["hydra.sweeper.direction=['maximize', 'minimize']", "['minimize', 'minimize']"], 2),
    # a searched key Optuna cannot store beside the study's trials (issue: it raised inside
    # the first new trial, left it RUNNING and rewrote the study's parent run FAILED)
    ("sweep: resumed with other choices",
     [*SWEEP, "hydra.sweeper.enqueue=null", "kl/schedule=choice(constant,linear)"],
     ["kl/schedule='choice(constant,linear)'", "existing study 'quick'",
      "CategoricalDistribution(choices=('constant', 'linear', 'sigmoid'))",
      "CategoricalDistribution(choices=('constant', 'linear'))", "study.name=<new name>"], 2),
    ("sweep: resumed with another kind of distribution",
     [*SWEEP, "hydra.sweeper.enqueue=null", "kl.beta_norm=choice(0.01,0.1)"],
     ["kl.beta_norm='choice(0.01,0.1)'", "existing study 'quick'",
      "FloatDistribution(high=10.0, log=True, low=0.001, step=None)",
      "CategoricalDistribution(choices=(0.01, 0.1))", "study.name=<new name>"], 2),
    ("sweep: resumed with the log scale switched",
     [*SWEEP, "hydra.sweeper.enqueue=null", "kl.beta_norm=interval(0.001,1)"],
     ["kl.beta_norm='interval(0.001,1)'", "different log configuration",
      "FloatDistribution(high=1.0, log=False, low=0.001, step=None)"], 2),
    ("sweep: objectives and directions disagree", [*SWEEP, "objective=[test/rate]"],
     ["objective=['test/rate']", "2 metric name(s)"], 2),
    # settings that cannot work together (issue 15): refused on the sweep's first job
    ("prune_on typo", ["study.prune_on=val/distortoin"],
     ["study.prune_on='val/distortoin'", "val/distortion, val/rate"], 2),
    ("sweep: prune_on typo", [*SWEEP, "study.prune_on=val/distortoin"],
     ["study.prune_on='val/distortoin'", "val/distortion, val/rate"], 2),
    ("sweep: prune_on not a val metric", [*SWEEP, "study.prune_on=test/distortion"],
     ["study.prune_on='test/distortion'", "a val/* metric name"], 2),
    ("sweep: pruner on a multi-objective study",
     [*SWEEP, "+hydra.sweeper.pruner._target_=optuna.pruners.MedianPruner"],
     ["hydra.sweeper.pruner='MedianPruner'", "pruning needs a single-objective study"], 2),
    ("sweep: pruner without validation",
     [*SWEEP, *SINGLE, "+hydra.sweeper.pruner._target_=optuna.pruners.MedianPruner",
      "trainer.limit_val_batches=0"], ["trainer.limit_val_batches=0", "MedianPruner reads"], 2),
    ("sweep: objective needs factors the data lacks",
     [*SWEEP, "study.name=other", "data=digits", "model=mlp", "metrics.enabled=[mig]",
      "objective=[test/mig,test/rate]"], ["objective='test/mig'", "ground-truth factors"], 2),
    ("sweep: objective not evaluated", [*SWEEP, "study.name=other", "objective=[test/iwae_nll,test/rate]"],
     ["objective='test/iwae_nll'", "metrics.enabled to include iwae_nll"], 2),
    ("sweep: objective the head lacks", [*SWEEP, "study.name=other", "objective=[val/sigma,test/rate]",
                                         "trainer.val_check_interval=1"],
     ["objective='val/sigma'", "a likelihood head with a sigma"], 2),
    ("sweep: val objective without validation",
     [*SWEEP, *SINGLE, "objective=[val/distortion]", "trainer.limit_val_batches=0"],
     ["objective='val/distortion'", "validation, which trainer.limit_val_batches=0 turns off"], 2),
    ("sweep: sampler that cannot do multi-objective", [*OPTUNA, "hydra/sweeper/sampler=cmaes"],
     ["hydra.sweeper.sampler='CmaEsSampler'", "direction=['minimize', 'minimize']"], 2),
    ("sweep: grid sampler over an interval", [*OPTUNA, "hydra/sweeper/sampler=grid"],
     ["hydra.sweeper.sampler='GridSampler'", "discrete", "choice(...)"], 2),
    ("sweep: direction typo", [*SWEEP, "study.name=other", "hydra.sweeper.direction=[minimise,minimize]"],
     ["hydra.sweeper.direction=['minimise', 'minimize']", "minimize or maximize"], 2),
    ("sweep: no trials", [*SWEEP, "hydra.sweeper.n_trials=0"],
     ["hydra.sweeper.n_trials=0", "whole number in [1, inf]"], 2),
    ("sweep: failure rate above 1", [*SWEEP, "hydra.sweeper.max_failure_rate=2"],
     ["hydra.sweeper.max_failure_rate=2", "[0, 1]"], 2),
    ("sweep: parallel trials on the basic launcher", [*SWEEP, "hydra.sweeper.n_jobs=2"],
     ["hydra.sweeper.n_jobs=2", "hydra/launcher=joblib"], 2),
    ("metrics setting checked before training", ["metrics.mig_bins=1"],
     ["metrics.mig_bins=1", "whole number in [2, inf]"], 2),
    # counts that int() or Lightning would have truncated or misread (issue 15)
    ("max_steps not whole", ["trainer.max_steps=6.5"], ["trainer.max_steps=6.5", "whole number"], 2),
    ("log_every_n_steps not whole", ["trainer.log_every_n_steps=2.5"],
     ["trainer.log_every_n_steps=2.5", "whole number in [1, inf]"], 2),
    ("val_check_interval float above 1", ["trainer.val_check_interval=2.5"],
     ["trainer.val_check_interval=2.5", "a fraction of an epoch in (0, 1]"], 2),
    ("n_images not whole", ["tracking.n_images=2.5"], ["tracking.n_images=2.5", "whole number in [1, inf]"], 2),
    # an empty name fell back to a default (study.name='' wrote into `quick`)
    ("empty study.name", [*SWEEP, "study.name=''"], ["study.name='' is invalid", "a non-empty name"], 2),
    ("empty experiment", ["tracking.experiment=''"],
     ["tracking.experiment='' is invalid", "a non-empty name"], 2),
    ("empty experiment in a sweep", [*SWEEP, "tracking.experiment=''"],
     ["tracking.experiment='' is invalid", "a non-empty name"], 2),
    ("empty run_name", ["tracking.run_name=''"], ["tracking.run_name='' is invalid"], 2),
    ("empty hydra study_name", [*SWEEP, "hydra.sweeper.study_name=''"],
     ["hydra.sweeper.study_name='' is invalid"], 2),
    # MLflow's search filters quote a string in ' or " with no escape: one of them must be free
    ("name with both quotes", [*SWEEP, "study.name='a\\'b\"c'"],
     ["study.name='a\\'b\"c' is invalid", "without both a ' and a \""], 2),
    # checks that came only inside each trial (issue 6): refused before the first trial
    ("sweep: val objective, no validation within max_steps",
     [*SWEEP, "study.name=other", "objective=[val/distortion,test/rate]", "trainer.val_check_interval=10"],
     ["objective='val/distortion'", "trainer.val_check_interval=10 is more than the 2 batches"], 2),
    ("sweep: val objective, no validation images",
     [*SWEEP, "study.name=other", "objective=[val/distortion,test/rate]", "data.val_fraction=0"],
     ["objective='val/distortion'", "data.val_fraction=0 leaves none"], 2),
    ("sweep: float interval for a whole-number key", [*OPTUNA, "model.latent_dim=interval(2,16)"],
     ["model.latent_dim='interval(2,16)'", "int(interval(2, 16)) or range(2, 17)", "such as 5.5"], 2),
    ("sweep: log float interval for a whole-number key",
     [*OPTUNA, "model.latent_dim=tag(log,interval(2,16))"],
     ["model.latent_dim='tag(log,interval(2,16))'", "tag(log, int(interval(2, 16)))"], 2),
    ("sweep: interval with low above high", [*OWN_SPACE, "kl.beta_norm=tag(log,interval(1.0,0.001))"],
     ["kl.beta_norm='tag(log,interval(1.0,0.001))'", "low <= high", "low=1.0, high=0.001"], 2),
    ("sweep: log interval from 0", [*OWN_SPACE, "kl.beta_norm=tag(log,interval(0,1))"],
     ["kl.beta_norm='tag(log,interval(0,1))'", "low > 0", "low=0.0, high=1.0"], 2),
    ("sweep: interval end out of range", [*OWN_SPACE, "kl.beta_norm=interval(-1,1)"],
     ["kl.beta_norm=-1.0 is invalid", "[0, inf]", "the sweep kl.beta_norm=interval(-1,1)"], 2),
    ("sweep: choice value of the wrong type", [*OPTUNA, "model.latent_dim=choice(4,abc)"],
     ["model.latent_dim='abc' is invalid", "whole number", "choice(4,abc)"], 2),
    ("sweep: choice value out of range, not the first", [*OPTUNA, "kl.reduction=choice(mean,avg)"],
     ["kl.reduction='avg' is invalid", "'sum', 'mean'"], 2),
    ("sweep: interval for a config group", [*OPTUNA, "kl/schedule=interval(0,1)"],
     ["kl/schedule='interval(0,1)' is invalid", "choice(...)", "linear"], 2),
    ("sweep: unknown option of a swept group", [*OPTUNA, "kl/schedule=choice(constant,nope)"],
     ["kl/schedule='nope' is invalid", "constant, cosine"], 2),
    ("grid: a bad value that is not the first", ["-m", "+sweep=beta_norm_grid", "kl.beta_norm=0.1,-1"],
     ["kl.beta_norm=-1 is invalid", "[0, inf]"], 2),
    ("max_steps beyond the bound", ["trainer.max_steps=1e20"],
     ["trainer.max_steps=1e+20", "whole number in [-1, 1e+09]"], 2),
    ("sweep: max_steps beyond the bound", [*SWEEP, "trainer.max_steps=1e20"],
     ["trainer.max_steps=1e+20", "whole number in [-1, 1e+09]"], 2),
]


@pytest.mark.parametrize("args,needles,exit_code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(cwd, args, needles, exit_code):
    full = args if args[0] in ("-m", "sweep") else [*BASE, *args]
    code, err = main(full)
    check(code, err, needles, exit_code)
    if exit_code == 2:  # ours: exactly one line
        lines = [l for l in err.splitlines() if l.startswith("vaesweep: error:")]
        assert len(lines) == 1, err


@pytest.mark.parametrize("args", [[*BASE, "trainer.max_steps=1e20"],
                                  [*SWEEP, "kl.reduction=avg"]], ids=["run", "sweep"])
def test_a_key_given_twice_is_one_warning_line(cwd, args):
    """Hydra takes the last of two values of one key without a word (issue 6): one warning
    line says so, once (not per job of a sweep)."""
    code, err = main([*args[:-1], "kl.beta_norm=0.1", "kl.beta_norm=0.2", args[-1]])
    assert code == 2, err
    warnings = [l for l in err.splitlines() if l.startswith("vaesweep: warning:")]
    assert warnings == ["vaesweep: warning: kl.beta_norm is given twice (0.1, 0.2); using the "
                        "last, 0.2"], err


# a bad value of any part (head, weighting, schedule, model, dataset) is refused right after
# composition, by the part's dataclass (issue 14): no data loaded (the default dSprites would be
# generated and cached), no MLflow run, no Optuna trial
EARLY = [
    (["kl.reduction=avg"], ["kl.reduction='avg'", "'sum', 'mean'"]),
    (["likelihood=gaussian_learned", "likelihood.scope=pixels"],
     ["likelihood.scope='pixels'", "'scalar', 'channel', 'pixel'"]),
    (["likelihood=laplace", "likelihood.learn_scale=true", "likelihood.scale=0.001"],
     ["likelihood.scale=0.001", "exp(likelihood.min_log_scale)"]),
    (["kl/schedule=cyclical", "kl.schedule.ratio=0"], ["kl.schedule.ratio=0", "(0, 1]"]),
    (["kl=geco", "kl.lambda_min=10", "kl.lambda_max=1"], ["kl.lambda_max=1", "[10, inf]"]),
    (["model.hidden=0"], ["model.hidden=0", "whole number in [1, inf]"]),
    (["model=mlp", "model.hidden=[64,0.5]"], ["model.hidden=[64, 0.5]", "a list of whole numbers"]),
    (["data.val_fraction=0.6", "data.test_fraction=0.5"], ["data.val_fraction=0.6", "at most 0.5"]),
    ([*SWEEP, "kl/schedule=linear", "kl.schedule.start=2"], ["kl.schedule.start=2", "[0, 1]"]),
]


@pytest.mark.parametrize("args,needles", EARLY, ids=[" ".join(a[-2:]) for a, _ in EARLY])
def test_a_bad_part_value_fails_before_the_data_are_loaded(cwd, monkeypatch, args, needles):
    from vaesweep.data import loaders

    loaded = []

    def no_data(cfg):
        loaded.append(cfg)
        raise RuntimeError("the data were loaded before the config was checked")

    monkeypatch.setattr(loaders, "cached_imageset", no_data)
    # no data.subset: the default data would be the whole dSprites set, generated and cached
    full = args if args[0] == "-m" else ["trainer=smoke", "threads=1", *args]
    code, err = main(full)
    check(code, err, needles, 2)
    assert not loaded, "the data were loaded before the bad value was refused"
    assert not (cwd / "data").exists()
    db = cwd / "mlflow.db"
    assert not db.exists() or not search_runs(f"sqlite:///{db}")


def test_a_bad_value_in_an_empty_folder_writes_no_data_and_no_store(tmp_path):
    """The real entry point in a fresh process, in an empty folder: the default data (the
    whole dSprites set, generated and cached on first use) are never built, and no MLflow
    store is opened."""
    r = run_cli(["kl.reduction=avg"], tmp_path)  # VAESWEEP_DATA: tmp_path/data
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "vaesweep: error: kl.reduction='avg' is invalid: allowed is one of 'sum', 'mean'")
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()


def test_data_files_missing(cwd):
    code, err = main([*BASE, "data=dsprites_npz", f"data.root={cwd / 'nowhere'}"])
    check(code, err, ["data.root", "nowhere", "is missing", "download"], 2)
    code, err = main([*BASE, "data=mnist", f"data.root={cwd / 'nowhere'}"])
    check(code, err, ["data.root", "nowhere", "mnist is missing", "data.download=true"], 2)


def test_data_file_truncated_npz(cwd):
    root = truncated_npz(cwd / "dsprites")
    code, err = main([*BASE, "data=dsprites_npz", f"data.root={root}"])
    check(code, err, ["data.root", "corrupt or truncated", str(root)], 2)


def test_data_file_wrong_idx_magic(cwd):
    root = mnist_wrong_magic(cwd / "mnist")
    code, err = main([*BASE, "data=mnist", f"data.root={root}", "model=conv28"])
    check(code, err, ["data.root", "train-images-idx3-ubyte", "magic 12345678", "expected 00000803"], 2)


def test_tracking_folder_read_only(cwd, read_only_dir):
    code, err = main([*BASE, f"tracking.uri=sqlite:///{read_only_dir}/mlflow.db"])
    check(code, err, [f"tracking.uri='sqlite:///{read_only_dir}/mlflow.db'",
                      "reachable, writable", "Read-only file system"], 2)
    code, err = main([*SWEEP, f"tracking.uri=sqlite:///{read_only_dir}/mlflow.db"])
    check(code, err, ["tracking.uri=", "Read-only file system"], 2)


def test_storage_folder_read_only(cwd, read_only_dir):
    code, err = main([*SWEEP, f"study.storage=sqlite:///{read_only_dir}/optuna.db"])
    check(code, err, [f"hydra.sweeper.storage='sqlite:///{read_only_dir}/optuna.db'"], 2)
    assert not (cwd / "mlflow.db").exists() or not search_runs(f"sqlite:///{cwd}/mlflow.db")


# -- damaged stores ------------------------------------------------------------------------------
def damaged_copy(db: Path, name: str) -> Path:
    """A copy of the SQLite file ``db`` cut to its first 40 kB, as a full disk or a killed copy
    leaves it."""
    out = db.with_name(name)
    out.write_bytes(db.read_bytes()[:40_000])
    return out


def one_line(code: int, err: str, needles: list[str]) -> None:
    check(code, err, needles, 2)
    assert "[SQL" not in err and "sqlalche.me" not in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


def test_truncated_stores_are_one_line_in_every_command(cwd):
    code, err = main(BASE)  # a real store, written by a tiny run
    assert code == 0, err[-3000:]
    run_id = search_runs(f"sqlite:///{cwd / 'mlflow.db'}")[0].info.run_id
    bad_uri = f"sqlite:///{damaged_copy(cwd / 'mlflow.db', 'damaged_mlflow.db')}"
    # a study whose best trial names that run: `best` reads the tracking store
    storage = f"sqlite:///{cwd / 'study.db'}"
    study = optuna.create_study(study_name="single", storage=storage, direction="minimize")
    study.add_trial(optuna.trial.create_trial(
        params={"kl.beta_norm": 0.1}, values=[1.0], user_attrs={"mlflow_run_id": run_id},
        distributions={"kl.beta_norm": optuna.distributions.FloatDistribution(1e-3, 10, log=True)}))
    needles = [f"--tracking-uri='{bad_uri}'", "a readable MLflow tracking store",
               "not a readable SQLite database", "restore it from a backup"]
    for args in (["best", "single", "--storage", storage, "--tracking-uri", bad_uri,
                  "--out", str(cwd / "best.yaml")],
                 ["report", "quick", "--tracking-uri", bad_uri, "--out", str(cwd / "report")],
                 ["reproduce", run_id, "--tracking-uri", bad_uri]):
        code, err = main(args)
        one_line(code, err, needles)
    assert not (cwd / "best.yaml").exists() and not (cwd / "report").exists()
    # the Optuna storage: best, and a sweep that would resume its study
    bad_storage = f"sqlite:///{damaged_copy(cwd / 'study.db', 'damaged_optuna.db')}"
    needles = [f"--storage='{bad_storage}'", "a readable Optuna storage",
               "not a readable SQLite database"]
    good_uri = f"sqlite:///{cwd / 'mlflow.db'}"
    code, err = main(["best", "single", "--storage", bad_storage, "--tracking-uri", good_uri])
    one_line(code, err, needles)
    code, err = main([*SWEEP, *SINGLE, f"study.storage={bad_storage}"])
    one_line(code, err, [f"hydra.sweeper.storage='{bad_storage}'", "not a readable SQLite database"])
    # a single run logging into the damaged tracking store
    code, err = main([*BASE, f"tracking.uri={bad_uri}"])
    one_line(code, err, [f"tracking.uri='{bad_uri}'", "not a readable SQLite database"])


# -- security ---------------------------------------------------------------------------------
def test_checkpoint_that_runs_code_is_refused(cwd):
    marker = cwd / "pwned"
    evil = cwd / "evil.ckpt"
    import torch
    torch.save({"state_dict": {}, "optimizer_states": [], "x": Evil(marker)}, evil)
    code, err = main([*BASE, f"ckpt_path={evil}"])
    check(code, err, [f"ckpt_path='{evil}'", "weights_only=True", "unsupported GLOBAL posix.system"], 2)
    assert not marker.exists(), "unpickling the checkpoint ran code"


@pytest.mark.parametrize("args,key", [
    (["+hydra.callbacks.x._target_=os.system", "+hydra.callbacks.x._args_=[touch {marker}]"],
     "hydra.callbacks.x"),
    (["+hydra.callbacks.x._target_=shutil.copyfile", "+hydra.callbacks.x._args_=[{src},{marker}]"],
     "hydra.callbacks.x"),
    (["-m", "+sweep=quick", "+hydra.sweeper.pruner._target_=os.system",
      "+hydra.sweeper.pruner._args_=[touch {marker}]"], "hydra.sweeper.pruner._target_='os.system'"),
    (["-m", "+sweep=quick", "hydra.sweeper.sampler._target_=shutil.copyfile",
      "+hydra.sweeper.sampler._args_=[{src},{marker}]"],
     "hydra.sweeper.sampler._target_='shutil.copyfile'"),
    (["-m", "+sweep=quick", "hydra.sweeper.custom_search_space=os.system"],
     "hydra.sweeper.custom_search_space._target_='os.system'"),
], ids=["callback os.system", "callback shutil.copyfile", "pruner os.system",
        "sampler shutil.copyfile", "custom_search_space os.system"])
def test_config_cannot_run_arbitrary_code(cwd, args, key):
    marker, src = cwd / "pwned", ROOT / "README.md"
    args = [a.format(marker=marker, src=src) for a in args]
    code, err = main(args)
    assert code != 0, err
    assert key in err, err[-3000:]
    assert "whitelist" in err, err[-3000:]
    assert not marker.exists(), "the config ran code"


def test_servers_in_the_readme_bind_to_localhost():
    docs = [p for p in (ROOT / "docs" / "pages").glob("**/*.md") if "results" not in p.parts]
    text = "".join(p.read_text() for p in [ROOT / "README.md", ROOT / "Makefile", *docs])
    text = text.replace("\\\n", " ")  # continued lines
    commands = [line for line in text.splitlines()
                if any(s in line for s in ("mlflow ui", "mlflow server", "optuna-dashboard "))]
    assert commands
    for line in commands:
        assert "--host 127.0.0.1" in line, line


# -- what a run writes where ------------------------------------------------------------------
def test_refused_run_leaves_no_outputs_folder(cwd):
    code, err = main([*BASE, "kl.beta_norm=-1"])
    check(code, err, ["kl.beta_norm=-1"], 2)
    assert not (cwd / "outputs").exists(), list((cwd / "outputs").rglob("*"))


def test_run_and_best_in_a_read_only_folder_are_one_line(cwd, read_only_dir, monkeypatch):
    monkeypatch.chdir(read_only_dir)
    code, err = main(BASE)
    check(code, err, ["hydra.run.dir=", "a folder that can be written", str(read_only_dir)], 2)
    storage = f"sqlite:///{cwd / 'study.db'}"
    study = optuna.create_study(study_name="single", storage=storage, direction="minimize")
    study.add_trial(optuna.trial.create_trial(
        params={"kl.beta_norm": 0.1}, values=[1.0], user_attrs={"mlflow_run_id": "0" * 32},
        distributions={"kl.beta_norm": optuna.distributions.FloatDistribution(1e-3, 10, log=True)}))
    code, err = main(["best", "single", "--storage", storage,
                      "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}"])
    check(code, err, ["--out='best_single.yaml'", "a folder that can be written", "--out PATH"], 2)


def test_chdir_run_logs_into_the_launch_folder_store(cwd):
    code, err = main([*BASE, "hydra.job.chdir=true", "tracking.uri=sqlite:///mlflow.db"])
    assert code == 0, err[-3000:]
    assert [r.info.status for r in search_runs(f"sqlite:///{cwd / 'mlflow.db'}")] == ["FINISHED"]
    assert not list((cwd / "outputs").rglob("mlflow.db"))
    assert not list((cwd / "outputs").rglob("mlruns"))


def test_reproducing_a_pruned_run_says_so_up_front():
    from types import SimpleNamespace

    from vaesweep.sweep.best import pruned_note
    run = SimpleNamespace(info=SimpleNamespace(run_id="abc"), data=SimpleNamespace(tags={
        "vaesweep.state": "PRUNED",
        "vaesweep.error": "TrialPruned: pruned at step 2: val/distortion=3.1"}))
    assert pruned_note(run, 600) == ("run abc was pruned at step 2 of 600; reproducing the "
                                     "full run, so its metrics will differ from the pruned run's")
    run.data.tags = {}
    assert pruned_note(run, 600) is None
# -- deleted MLflow runs and experiments, names with quotes -----------------------------------
def _restore(err: str, kind: str, ident: str) -> None:
    """The error's one line names the deleted run or experiment and the command restoring it."""
    lines = [l for l in err.splitlines() if l.startswith("vaesweep: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    option = "--run-id" if kind == "run" else "--experiment-id"
    assert f"mlflow {kind}s restore {option} {ident}" in lines[0], lines[0]
    assert "tracking.uri=" not in lines[0], lines[0]  # not the store's fault


def test_a_deleted_parent_run_is_refused_on_resume(workdir):
    """``mlflow runs delete`` on a study's parent run, then a resume: one error on
    ``study.name`` naming the run and ``mlflow runs restore``; the study is not touched
    (it blamed ``tracking.uri`` and said the run "must be in the 'active' state")."""
    from mlflow.tracking import MlflowClient

    code, err = main([*SWEEP])
    assert code == 0, err[-3000:]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    parent = optuna.load_study(study_name="quick", storage=f"sqlite:///{workdir / 'optuna.db'}"
                               ).user_attrs["mlflow_parent_run_id"]
    MlflowClient(tracking_uri=uri).delete_run(parent)
    before = study_state(workdir / "optuna.db")
    code, err = main([*SWEEP[:-1], "hydra.sweeper.n_trials=2"])
    assert code == 2, err[-3000:]
    assert "study.name='quick' is invalid" in err and parent in err, err[-3000:]
    _restore(err, "run", parent)
    assert study_state(workdir / "optuna.db") == before, "the Optuna study changed"
    assert not [r for r in search_runs(uri) if r.info.status == "RUNNING"]


def test_a_deleted_experiment_is_refused_before_anything_is_written(workdir):
    """``mlflow experiments delete``, then a run and a new sweep: one error on
    ``tracking.experiment`` naming its id and ``mlflow experiments restore``; the sweep
    writes no Optuna study (it wrote an empty one, then blamed ``tracking.uri``)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("vaesweep")
    client.delete_experiment(exp_id)
    for args in (BASE, SWEEP):
        code, err = main(list(args))
        assert code == 2, err[-3000:]
        assert "tracking.experiment='vaesweep' is invalid" in err, err[-3000:]
        _restore(err, "experiment", exp_id)
    db = workdir / "optuna.db"
    assert not db.exists() or not optuna.get_all_study_names(f"sqlite:///{db}")
    assert not client.search_runs([exp_id], run_view_type=3)  # ViewType.ALL: no run made


def test_ckpt_path_last_of_a_deleted_run_is_refused(workdir):
    """Resuming (``ckpt_path=last``) a run whose MLflow run was deleted: one error on
    ``ckpt_path`` naming the run and how to restore it; the run stays deleted, not RUNNING."""
    from mlflow.tracking import MlflowClient

    args = [*BASE, "hydra.run.dir=runs/a"]
    code, err = main(args)
    assert code == 0, err[-3000:]
    run_id = (workdir / "runs/a/checkpoints/mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    client.delete_run(run_id)
    code, err = main([*args, "ckpt_path=last"])
    assert code == 2, err[-3000:]
    assert "ckpt_path='last' is invalid" in err and run_id in err, err[-3000:]
    _restore(err, "run", run_id)
    run = client.get_run(run_id)
    assert run.info.lifecycle_stage == "deleted" and run.info.status == "FINISHED"


def test_a_name_with_a_quote_works_through_sweep_resume_best_and_report(workdir, capsys):
    """``study.name="bob's"``: the sweep, its resume, ``best`` and ``report`` work (the name
    went unquoted into MLflow's search filters: ``Invalid clause(s) in filter string``). A
    deleted trial run is left out by ``best`` and ``report`` alike, with one line saying so."""
    from mlflow.tracking import MlflowClient

    from vaesweep.report.cli import report_main
    from vaesweep.sweep.best import best_main

    name = "bob's"
    uri, storage = f"sqlite:///{workdir / 'mlflow.db'}", f"sqlite:///{workdir / 'optuna.db'}"
    args = [*SWEEP[:-1], *SINGLE[1:], f'study.name="{name}"', "hydra.sweeper.enqueue=null"]
    for n in (1, 2):  # the sweep, then its resume
        code, err = main([*args, f"hydra.sweeper.n_trials={n}"])
        assert code == 0, err[-3000:]
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    runs = [r for r in search_runs(uri) if r.data.tags.get("vaesweep.role") != "parent"]
    assert len(runs) == 2 and {r.data.tags["vaesweep.sweep"] for r in runs} == {name}

    best, other = sorted(done, key=lambda t: t.values[0])
    MlflowClient(tracking_uri=uri).delete_run(best.user_attrs["mlflow_run_id"])
    capsys.readouterr()
    assert best_main([name, "--storage", storage, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "1 deleted MLflow run(s) ignored" in out and "mlflow runs restore --run-id" in out
    assert f"trial {other.number}:" in out and f"trial {best.number}:" not in out, out
    assert (workdir / f"best_{name}.yaml").is_file()
    assert report_main([name, "--tracking-uri", uri, "--storage", storage, "--max-images", "0",
                        "--no-log", "-q"]) == 0
    md = (workdir / f"report_{name}" / "report.md").read_text()
    assert "1 deleted MLflow run(s) ignored" in md
    from vaesweep.report.data import load_sweep
    data = load_sweep(name, uri, storage=storage)
    assert data.study.best_trials == [other.number]
    assert best.user_attrs["mlflow_run_id"] not in set(data.runs["run_id"])


def test_filter_values_are_quoted_for_mlflow():
    """Each quoted name parses back to itself in MLflow's filter grammar; one that cannot be
    quoted is a ConfigError naming the key."""
    from mlflow.utils.search_utils import SearchUtils

    from vaesweep.errors import ConfigError
    from vaesweep.tracking.tags import file_part, filter_value

    for v in ["quick", "bob's", 'say "hi"', "a`b", "x and tags.y = 'z"]:
        parsed = SearchUtils.parse_search_filter(f"tags.`k` = {filter_value(v)} and tags.`j` = 'x'")
        assert parsed[0]["value"] == v and parsed[1]["value"] == "x"
    with pytest.raises(ConfigError, match="study.name"):
        filter_value("a'b\"c", "study.name")
    assert file_part("a/b\\c") == "a_b_c"


def test_report_of_a_plain_multirun_says_how_to_run_one_it_can_report(cwd):
    """``vaesweep -m key=a,b`` runs under Hydra's basic sweeper: tagged runs, no parent run.
    ``report`` said "none yet" of a store holding them; it names the sweeper that reports."""
    code, err = main(["-m", "data=digits", "model=mlp", *BASE, "kl.beta_norm=0.01,0.1",
                      "study.name=mine"])
    assert code == 0, err[-3000:]
    code, err = main(["report", "mine", "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}"])
    check(code, err, ["sweep='mine' is invalid", "have no parent run",
                      "hydra/sweeper=vaesweep_basic study.name=mine"], 2)
