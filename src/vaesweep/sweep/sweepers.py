"""Hydra sweepers for vaesweep: the Optuna sweeper and Hydra's basic sweeper, extended.
(Hydra finds them through the thin plugin module hydra_plugins/vaesweep_sweepers/sweepers.py;
the Hydra and Optuna internals they need are all in :mod:`vaesweep.sweep.compat`.)

Both keep Hydra's override grammar and launchers. They add one MLflow parent run per sweep
(every job a child run), and the Optuna one adds what the stock sweeper lacks: resuming a
study to exactly ``n_trials`` finished trials, recording failed trials (with their reason)
and going on, stale trials of dead processes marked FAIL, and pruning with Optuna's pruners
inside multirun (Lightning+Hydra users ask for it: lightning-hydra-template#176).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.errors import InstantiationException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vaesweep.cli import fail, warn_repeated
from vaesweep.contract import ATTR_FAIL_REASON, ATTR_PRUNED_REASON, TAG_HOST, TAG_PID, TAG_PID_START
from vaesweep import stops
from vaesweep.errors import ConfigError, Interrupted, VaesweepError, number, stop_signal
from vaesweep.job.faults import machine_fault
from vaesweep.sweep import compat
from vaesweep.sweep.compat import BasicSweeper, OptunaSweeperImpl, create_params_from_overrides
from vaesweep.job.checks import key_check, resolve, validate_job
from vaesweep.sweep.objectives import name_objectives
from vaesweep.sweep.best import best_trials, summary_rows
from vaesweep.sweep.parent import (ATTR_PARENT_RUN_ID, InjectingLauncher, grid_note,
                                   job_overrides, open_parent, study_note, study_parent,
                                   sweep_settings)
from vaesweep.sweep.progress import sweep_progress
from vaesweep.sweep.trial import storage
from vaesweep.tracking.run import (check_experiment, check_store, creation_lock, deleted_run,
                                   set_note, store_error)
from vaesweep.tracking.tags import check_name, set_tags
from vaesweep.tracking.stale import close_children, close_stale_runs, owner, owner_alive

log = logging.getLogger("vaesweep.sweep")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# what a sweep config may name as _target_ (Hydra's execution whitelist): nothing else runs
SAMPLER_WHITELIST = ("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
PRUNER_WHITELIST = ("optuna.pruners.*",)
SEARCH_SPACE_WHITELIST = ("vaesweep.*",)


def _instantiate(key: str, config: Any, allowed: Sequence[str]) -> Any:
    """``instantiate`` under an execution whitelist; a refused target is one ConfigError."""
    try:
        return instantiate(config, _execution_whitelist_=tuple(allowed))
    except InstantiationException as e:
        target = config.get("_target_") if hasattr(config, "get") else config
        reason = " ".join(str(e).split())
        with user_errors():
            raise ConfigError(f"{key}._target_", target, " or ".join(allowed),
                              reason[:300] + ("..." if len(reason) > 300 else "")) from None


class user_errors:
    """A VaesweepError raised by a sweeper is one line on stderr and exit code 2, as in a
    single run (Hydra would print a traceback)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, VaesweepError):
            fail(exc)
        return False


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """RUNNING trials whose sweep process (same host) is gone are marked FAIL with a reason."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        a = t.system_attrs
        pid, thost = a.get(TAG_PID), a.get(TAG_HOST)
        if owner_alive({TAG_HOST: thost, TAG_PID: pid, TAG_PID_START: a.get(TAG_PID_START)}) \
                is not False:
            continue
        reason = f"stale: the sweep process {pid} on {thost} died while the trial ran"
        compat.fail_trial(study, t, reason)
        failed.append(t.number)
    if failed:
        log.warning("Marked %d stale trial(s) FAIL: %s", len(failed), failed)
    return failed


def fail_unfinished(study: optuna.Study, trials: Sequence[optuna.Trial], e: BaseException) -> None:
    """Marks FAIL, with the reason, the ``trials`` still RUNNING when their launch ended in
    ``e`` (the user stopped the sweep), so that the study holds no live-looking trial."""
    stop = stop_signal(e)
    reason = f"interrupted by {stop[0]}" if stop else f"{type(e).__name__}: {e}"[:2000]
    for t in trials:
        try:
            if compat.is_running(study, t):
                compat.fail_trial(study, t, reason)
        except Exception as err:  # the storage itself failed: the next start marks them stale
            log.error("Could not mark trial %d FAIL: %s", t.number, err)


def ask_owned(study: optuna.Study, owner_attrs: dict,
              design: Sequence[dict] = ()) -> optuna.Trial:
    """``study.ask()``, but the trial is created RUNNING with its owner (host, pid) in one
    transaction: a sweep killed between asking and tagging would otherwise leave a RUNNING
    trial with no owner, which no resume could tell from a live one. With a ``design``
    (``hydra.sweeper.enqueue``), the trial gets the next point not yet run as its fixed
    params (Optuna's enqueue_trial mechanism) in that same transaction."""
    attrs = {k: int(v) if k == TAG_PID else v for k, v in owner_attrs.items()}
    point = next_design_point(study, design) if design else None
    if point is not None:
        attrs["fixed_params"] = point
    return compat.ask_with_system_attrs(study, attrs)


def check_design(points: Any, space: dict, fixed: Sequence[str] = ()) -> list[dict]:
    """``hydra.sweeper.enqueue``: a list of trials, each a mapping of every searched key to a
    value inside its distribution, as plain dicts without repeats. A key set on the command
    line (in ``fixed``) is dropped from the points: the command line wins. Anything else is
    one ConfigError, raised before a study is written."""
    if not points:
        return []
    key = "hydra.sweeper.enqueue"
    allowed = (f"a list of trials, each giving every searched key ({', '.join(space)}) a value "
               "inside its range (after adding a searched key: hydra.sweeper.enqueue=null lets "
               "the sampler choose every trial)")
    if not OmegaConf.is_list(points) and not isinstance(points, (list, tuple)):
        raise ConfigError(key, points, allowed)
    design: list[dict] = []
    replaced: dict[str, list] = {}
    for i, p in enumerate(points):
        p = OmegaConf.to_container(p) if OmegaConf.is_config(p) else p
        if not isinstance(p, dict):
            raise ConfigError(f"{key}[{i}]", p, allowed)
        for k in fixed:
            if k in p and p[k] not in replaced.setdefault(k, []):
                replaced[k].append(p[k])
        p = {k: v for k, v in p.items() if k not in fixed}
        if set(p) != set(space):
            raise ConfigError(f"{key}[{i}]", p, allowed)
        for k, v in p.items():
            if not compat.distribution_contains(space[k], v):
                raise ConfigError(f"{key}[{i}].{k}", v, f"a value inside {k}'s range {space[k]}")
        if p not in design:
            design.append(p)
    for k, values in replaced.items():
        if values:  # not silent: the design named other values for it
            log.warning("%s: %s is set on the command line, so the design's values of it (%s) "
                        "are not run; %d design point(s) remain", key, k,
                        ", ".join(map(str, values)), len(design))
    return design


def check_resumed_space(study: optuna.Study, space: dict, fixed: dict,
                        texts: dict | None = None) -> None:
    """A resumed study's search space against the distributions its trials stored (any
    state), before anything is written: the sweep must not leave a trial RUNNING, nor turn
    the study's FINISHED parent run FAILED, on a param that Optuna cannot store.

    ``space``: key -> Optuna distribution of this sweep; ``fixed``: key -> value set on the
    command line; ``texts``: key -> the sweep override as typed (for the message).

    Raises:
        ConfigError: a key whose distribution Optuna refuses beside the stored one (another
            kind, other categorical choices, log scale switched), naming both and the way on.

    Logs a warning, and goes on, for what Optuna stores (docs/pages/sweeps.md):
    a range or step moved, a key searched that the trials lack, a key
    the trials searched that is now fixed or gone."""
    stored: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        for k, d in t.distributions.items():
            if d not in stored.setdefault(k, []):
                stored[k].append(d)
    if not stored:
        return
    name = study.study_name
    for k, new in space.items():
        for old in stored.get(k, ()):
            why = compat.distribution_conflict(old, new)
            if why:
                raise ConfigError(
                    k, (texts or {}).get(k, str(new)), f"the distribution the trials of the "
                    f"existing study {name!r} used: {old}", f"this is {new}, which Optuna cannot "
                    f"store beside it: {why} Run a new study (study.name=<new name>) or sweep "
                    f"{k} as the study did")
        moved = [str(d) for d in stored.get(k, ()) if d != new]
        if moved:
            log.warning("[%s] %s is searched over %s; the study's trials used %s: its trials "
                        "are kept, and samplers that model the joint space (QMC, CMA-ES, "
                        "multivariate TPE) sample %s on its own until all trials share one",
                        name, k, new, ", ".join(moved), k)
    added = [k for k in space if k not in stored]
    if added:
        log.warning("[%s] searched now, not in the study's trials: %s (they ran with the "
                    "config's value)", name, ", ".join(added))
    gone = [f"{k} (now {fixed[k]})" if k in fixed else k for k in stored if k not in space]
    if gone:
        log.warning("[%s] searched by the study's trials, not now: %s (the new trials record "
                    "no value for it)", name, ", ".join(gone))


def override_texts(overrides: Sequence[str]) -> dict[str, str]:
    """key -> the value of a sweep override as typed (the last one of a key wins)."""
    texts = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.input_line and "=" in o.input_line:
            texts[o.get_key_element()] = o.input_line.split("=", 1)[1]
    return texts


def next_design_point(study: optuna.Study, design: Sequence[dict]) -> dict | None:
    """The first point of ``design`` that no finished or running trial of the study holds (a
    failed one is run again), or None when all are held: the sampler draws the trials past
    the design. A point is given to its trial as the trial is created, so no trial waits in
    the study for a worker (an enqueued one could, when workers start together). The sweep
    holds an flock on an SQLite study while it picks and asks; workers on a database server
    that ask at the same moment may run one point twice."""
    S = optuna.trial.TrialState
    # the point a trial was given, before the params it has written so far: another worker
    # writes its trial's params one by one after asking, so they can be partial here
    held = [t.system_attrs.get("fixed_params") or t.params for t in
            study.get_trials(deepcopy=False, states=(*FINISHED, S.RUNNING))]

    def same(a: dict, b: dict) -> bool:
        return set(a) == set(b) and all(
            math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(a[k], (int, float))
            and isinstance(b[k], (int, float)) else a[k] == b[k] for k in a)

    for p in design:
        match = next((h for h in held if same(p, h)), None)
        if match is None:
            return p
        held.remove(match)
    return None


#: what a search space may say (Hydra's Optuna sweeper grammar), for a key that cannot be sampled
SPACE_ALLOWED = ("a search space Optuna can sample: interval(low, high) with low <= high (low > 0 "
                 "in tag(log, interval(...)), low >= 1 in tag(log, int(interval(...)))), "
                 "range(start, stop[, step]) with at least one value, or choice(...)")


def search_space(arguments: Sequence[str]) -> tuple[dict, dict, list]:
    """``create_params_from_overrides``, with a search space that Optuna refuses (an interval
    whose low exceeds its high, a log scale from 0, an empty range) as one ConfigError naming
    the key and its bounds instead of a traceback from inside Optuna."""
    try:
        return create_params_from_overrides(list(arguments))
    except Exception as e:  # ValueError from Optuna's distributions, or Hydra's parser
        for a in arguments:
            try:
                create_params_from_overrides([a])
            except Exception as one:
                key, _, text = a.partition("=")
                reason = str(one).strip().splitlines()[0] if str(one).strip() else type(one).__name__
                raise ConfigError(key.lstrip("+~"), text, SPACE_ALLOWED, reason) from None
        raise e


@dataclasses.dataclass
class Swept:
    """The values a swept key can take, for checking before the first trial: ``values``
    (every choice or grid value; an interval's or range's ends), ``numeric`` (an interval or
    range, never a config group's option), and ``fractional``: a value of an interval of
    any number that is no whole number (None when it has none), with ``log`` its scale."""

    text: str
    values: list
    numeric: bool = False
    fractional: float | None = None
    log: bool = False

    @classmethod
    def of(cls, text: str, dist: Any) -> "Swept":
        """From an Optuna distribution (the Optuna sweeper's search space)."""
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            return cls(text, list(dist.choices))
        frac = None
        if isinstance(dist, optuna.distributions.FloatDistribution):
            lo, hi, step = dist.low, dist.high, dist.step
            if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
                inside = ([lo + k * step for k in range(1, min(int((hi - lo) / step), 64) + 1)]
                          if step else [lo + (hi - lo) * f for f in (0.5, 0.25, 0.375, 0.1)])
                frac = next((v for v in inside if v != int(v)), None)
        return cls(text, [dist.low, dist.high], True, frac, bool(getattr(dist, "log", False)))


def check_swept_groups(space: dict[str, Swept], options: Any) -> None:
    """A swept config group (``kl/schedule``, ``likelihood``, ``+head``) takes only its
    options (``options(group)``, Hydra's config loader): each choice is one of them, and an
    interval or range is refused. Raises ConfigError naming the group and the value."""
    for key, swept in space.items():
        group = key.lstrip("+~").split("@", 1)[0]
        names = options(group)
        if not names:
            continue  # a value key, not a group
        allowed = "one of the options of config group " + group + ": " + ", ".join(sorted(names))
        if swept.numeric:
            raise ConfigError(group, swept.text, f"choice(...) of {allowed}", "a config group "
                              "takes no interval or range")
        for v in swept.values:
            if v is not None and str(v) not in names:
                raise ConfigError(group, v, allowed, f"a value of the sweep {key}="
                                  f"{swept.text}; every value is checked before the first trial")


def check_swept_values(space: dict[str, Swept], c: Mapping[str, Any]) -> None:
    """Every value a swept key can take passes the key's own check (:func:`key_check`, from
    the schema; ``c``: the first job's resolved config): each choice, an interval's ends, and
    for a whole-number key an interval of whole numbers only. A value that fails would fail
    its trials one by one (Optuna draws inside an interval), so the sweep is refused first.
    Rules between keys and checks that need the data stay with each trial. Raises
    ConfigError naming the key, the value and what is allowed."""
    for key, swept in space.items():
        name = key.lstrip("+~")
        check = key_check(c, name)
        if check is None:
            continue
        frac = swept.fractional
        if frac is not None:
            try:  # the whole numbers either side pass, the fraction between them fails
                for v in (float(math.floor(frac)), float(math.ceil(frac))):
                    check(name, v)
                whole_ok = True
            except ConfigError:
                whole_ok = False
            try:
                check(name, frac)
            except ConfigError:
                if whole_ok:  # a whole-number key, swept over every number in between
                    lo, hi = math.ceil(swept.values[0]), math.floor(swept.values[1])
                    ints = (f"tag(log, int(interval({lo}, {hi})))" if swept.log else
                            f"int(interval({lo}, {hi})) or range({lo}, {hi + 1})")
                    raise ConfigError(name, swept.text, f"whole numbers only: sweep {ints}, or "
                                      "choice(...) of whole numbers", f"{swept.text} draws "
                                      f"fractional values such as {frac:g}") from None
        for v in swept.values:
            try:
                check(name, v)
            except ConfigError as e:
                raise ConfigError(e.key, e.value, e.allowed, f"a value of the sweep "
                                  f"{name}={swept.text}; every value is checked before the "
                                  "first trial") from None


def representative(dist: Any) -> Any:
    """A value inside an Optuna distribution (its middle; the first choice)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return dist.choices[0]
    lo, hi = dist.low, dist.high
    mid = math.sqrt(lo * hi) if getattr(dist, "log", False) and lo > 0 else (lo + hi) / 2
    step = getattr(dist, "step", None)
    if step:
        mid = lo + round((mid - lo) / step) * step
    return int(round(mid)) if isinstance(dist, optuna.distributions.IntDistribution) else mid


def job_value(ret: Any) -> Any:
    """A launched job's return value, or its exception raised again, without Hydra's "Error
    executing job with overrides" line on stderr (the sweepers say what became of the job:
    a pruned trial is no crash)."""
    error = compat.job_exception(ret)
    if ret.status == JobStatus.FAILED and error is not None:
        raise error
    return ret.return_value


def is_parallel_launcher(launcher: Any) -> bool:
    """Whether a Hydra launcher config runs the jobs of one batch at the same time (the basic
    launcher runs them one after another)."""
    target = str((launcher or {}).get("_target_", ""))
    return bool(target) and not target.endswith("basic_launcher.BasicLauncher")


def trials_at_once(n_jobs: Any, launcher: Any) -> Any:
    """``hydra.sweeper.n_jobs``, the trials the Optuna sweeper asks for and launches together:
    when it is not set (null), the launcher's own ``n_jobs`` (joblib's; -1 is every core, as
    joblib counts them), else 1. Says so in one log line, and warns when a set value leaves
    some of the launcher's ``n_jobs`` workers idle, or when a parallel launcher without
    ``n_jobs`` (Ray, SLURM) gets one trial at a time: a launcher's setting is never silently
    outweighed. A value that is no whole number >= 1 is returned as it is (checked later)."""
    launcher = launcher or {}
    parallel = is_parallel_launcher(launcher)
    workers = launcher.get("n_jobs") if parallel else None
    if isinstance(workers, int) and not isinstance(workers, bool) and workers != 0:
        from joblib import effective_n_jobs  # the launcher's own count of -1 (every core)
        workers = int(effective_n_jobs(workers))
    else:
        workers = None
    name = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    if n_jobs is None:
        if workers is not None:
            log.info("hydra.sweeper.n_jobs follows hydra.launcher.n_jobs=%s: %d trial(s) at once",
                     launcher.get("n_jobs"), workers)
            return workers
        if parallel:
            log.warning("hydra.sweeper.n_jobs is not set: the %s runs 1 trial at a time (set "
                        "hydra.sweeper.n_jobs=K to run K at once)", name)
        return 1
    if (workers is not None and isinstance(n_jobs, int) and not isinstance(n_jobs, bool)
            and 0 < n_jobs < workers):
        log.warning("hydra.sweeper.n_jobs=%d: %d trial(s) at a time, so %d of the %d workers of "
                    "hydra.launcher.n_jobs=%s stay idle (leave hydra.sweeper.n_jobs unset to "
                    "follow the launcher)", n_jobs, n_jobs, workers - n_jobs, workers,
                    launcher.get("n_jobs"))
    return n_jobs


def objective_names(config: DictConfig) -> list[str]:
    obj = config.get("objective") or []
    return [obj] if isinstance(obj, str) else [str(o) for o in obj]


class _ParentMixin:
    """Opens the sweep's MLflow parent run and hands its id to every job."""

    config: DictConfig
    launcher: Any
    #: whether the sweep reads the jobs' objectives (Optuna does; a grid does not)
    reads_objectives = False

    def _wrap_launcher(self) -> None:
        self.launcher = InjectingLauncher(self.launcher, [])

    def _open_parent(self, study: str | None, resume: bool, run_id: str | None = None):
        s = sweep_settings(self.config)
        self.sweep_name = s["sweep"]
        close_stale_runs(s["uri"], s["experiment"], s["sweep"])
        parent = open_parent(s["uri"], s["experiment"], s["sweep"], study, resume, run_id)
        self.parent_run_id = parent.run_id
        self.launcher.extra = job_overrides(self.config, parent.run_id)
        return parent

    def _close_launched(self, e: BaseException, trials: Sequence[int] | None = None) -> None:
        """A launch that ended in ``e`` (the user stopped the sweep; a worker died): the
        RUNNING runs of its jobs (``trials``: the Optuna trials launched; None: every child of
        this sweep's parent run) end KILLED for a stop, FAILED otherwise (docs/pages/reliability.md),
        and a stop's one line names them. A parallel launcher's workers are
        killed when the sweep stops (joblib's loky pool: SIGKILL), often before they could end
        their runs. A store that cannot be written leaves them to the next start
        (tracking/stale.py)."""
        stop = stop_signal(e)
        status = "KILLED" if stop else "FAILED"
        what = type(e).__name__ + (f": {e}" if str(e) else "")
        reason = (f"{what}; ended by the sweep process {os.getpid()}: the launch of its job "
                  "ended")[:2000]
        s = sweep_settings(self.config)
        try:
            with stops.held():  # a second Ctrl-C waits until the runs are ended
                closed, ended = close_children(s["uri"], s["experiment"], self.parent_run_id,
                                               status, reason,
                                               None if trials is None else set(trials))
        except Exception as err:  # the store itself failed: the next start marks them stale
            log.error("Could not mark the sweep's RUNNING runs %s: %s", status, err)
            return
        if closed:
            log.info("Marked %d RUNNING run(s) of the launched jobs %s: %s", len(closed),
                     status, ", ".join(closed))
        if isinstance(e, Interrupted):  # the stop's line names the runs it ended
            e.killed_runs.extend(r for r in [*ended, *closed] if r not in e.killed_runs)

    def _check_tracking(self) -> None:
        """The MLflow store opens (its tables created) before a study is written, so a store
        that cannot be written (read-only, disk full) or an experiment that was deleted
        (``mlflow experiments delete``) leaves no study behind."""
        s = sweep_settings(self.config)
        check_store(s["uri"])
        check_experiment(s["uri"], s["experiment"])  # a deleted one: which, how to restore it

    def _check_first_job(self, overrides: Sequence[str], swept: Sequence[str] = (),
                         space: Mapping[str, Swept] | None = None) -> None:
        """Composes and checks the config of a job of this sweep before any study, trial or
        run is written: an error that every job would hit stops the sweep with one line.
        ``space``: every value each swept key can take, each checked on its own first (a
        config group's options, the key's type and range: :func:`check_swept_groups`,
        :func:`check_swept_values`). An error of the first job on a swept key that depends on
        other keys belongs to that combination only; its trials fail and the sweep goes on."""
        space = {k: v for k, v in (space or {}).items() if not k.startswith("hydra.")}
        loader = self.hydra_context.config_loader

        def options(group: str) -> list[str]:
            try:
                return list(loader.get_group_options(group))
            except Exception:  # not a group's name
                return []

        check_swept_groups(space, options)
        cfg = loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        self._check_sweep_settings()
        if space:
            try:
                c = resolve(cfg)
            except VaesweepError:
                c = None  # validate_job names the key
            if c is not None:
                check_swept_values({k: v for k, v in space.items() if not options(
                    k.lstrip("+~").split("@", 1)[0])}, c)
        try:
            validate_job(cfg, objectives=self.reads_objectives)
        except VaesweepError as e:
            if getattr(e, "key", None) in swept:
                log.warning("A value of the swept key %s is invalid; those trials will fail: %s",
                            e.key, e)
                return
            raise

    def _check_sweep_settings(self) -> None:
        """Settings of the sweep that cannot work together with its launcher (the sweeper
        subclasses add their own)."""
        n_jobs = self.config.hydra.sweeper.get("n_jobs")
        if n_jobs is not None and int(n_jobs) > 1 and not is_parallel_launcher(
                self.config.hydra.get("launcher")):
            raise ConfigError("hydra.sweeper.n_jobs", n_jobs, "1 with the basic launcher, which "
                              "runs one job at a time", "for trials at once choose a parallel "
                              "launcher: hydra/launcher=joblib hydra.launcher.n_jobs="
                              f"{n_jobs}")


# -- Optuna ----------------------------------------------------------------------------------
class VaesweepOptunaImpl(_ParentMixin, OptunaSweeperImpl):
    reads_objectives = True

    def __init__(self, *args: Any, pruner: Any = None, max_failures_in_a_row: int = 0,
                 custom_search_space: Any = None, enqueue: Any = None,
                 sampler_factory: Any = None) -> None:
        super().__init__(*args)
        self.sampler_factory = sampler_factory  # a new sampler like the sweep's, for a dry trial
        self.enqueue = enqueue
        self.design: list[dict] = []
        self.pruner = pruner
        self._max_failures_in_a_row = max_failures_in_a_row  # checked in sweep(), not cast
        self.max_failures_in_a_row = 0  # the checked value, set in sweep(); 0: never stop
        self.custom_search_space_extender = custom_search_space

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self._wrap_launcher()

    def sweep(self, arguments: list[str]) -> None:
        self.n_jobs = trials_at_once(self.n_jobs, self.config.hydra.get("launcher"))
        # '' would fall back to the sweep's name (study.name='' wrote into `quick`)
        if (self.config.get("study") or {}).get("name") is not None:
            check_name("study.name", self.config.study.name)
        if self.study_name is not None:
            check_name("hydra.sweeper.study_name", self.study_name)
        warn_repeated(list(arguments))
        study_name = self.study_name or sweep_settings(self.config)["sweep"]
        self.study_name = study_name
        directions = self._get_directions()
        names = objective_names(self.config)
        if len(names) != len(directions):
            raise ConfigError("objective", names, f"{len(directions)} metric name(s), one per "
                              f"direction in hydra.sweeper.direction={directions}")
        self._process_searchspace_config()
        space, fixed, fixed_overrides = self._search_space(arguments)
        self._check_optuna_settings(directions, space, fixed, fixed_overrides)
        design = check_design(self.enqueue, space, [*fixed, *(
            o.split("=", 1)[0].lstrip("+~") for o in fixed_overrides)])
        texts = override_texts([*self._parse_sweeper_params_config(), *arguments])
        self._check_first_job([f"{k}={representative(d)}" for k, d in space.items()]
                              + [f"{k}={v}" for k, v in fixed.items()] + list(fixed_overrides),
                              swept=list(space),
                              space={k: Swept.of(texts.get(k, str(d)), d) for k, d in space.items()})
        self._check_storage()
        self._check_tracking()
        # the worker that creates the study names its parent run in it before a stop is
        # raised: else the next worker would wait for a parent that never comes
        with stops.held() as hold:
            study, created = self._load_study(directions, names, space, fixed, texts)
            if not created:
                hold.release()
            joined = None if created else study_parent(study, sweep_settings(self.config))
            with self._open_parent(study_name, resume=True, run_id=joined) as parent, \
                    sweep_progress(self.config, study_name, self.n_trials, done=lambda: len(
                        study.get_trials(deepcopy=False, states=FINISHED))):
                study.set_user_attr(ATTR_PARENT_RUN_ID, parent.run_id)
                hold.release()
                self.design = design
                self._say_if_done(study)
                self._optimize(study, arguments, directions, names)
                self._summarise(study, parent, names)
                set_note(parent.client, parent.run_id, study_note(study, names, self.n_trials))

    def _check_optuna_settings(self, directions: Sequence[str], space: dict, fixed: dict,
                               fixed_overrides: list) -> None:
        """The pruner and the sampler against the study's directions and search space, before
        anything is written: Optuna itself finds these only inside the first trial (a pruner's
        report in every trial of a multi-objective study; a sampler at the first ask)."""
        import copy
        import warnings

        for d in directions:
            if str(d).lower() not in ("minimize", "maximize"):
                raise ConfigError("hydra.sweeper.direction", list(directions),
                                  "a list of minimize or maximize, one per objective")
        number("hydra.sweeper.n_trials", self.n_trials, 1, integer=True)
        number("hydra.sweeper.n_jobs", self.n_jobs, 1, integer=True)
        if self._max_failures_in_a_row is not None:  # null: never stop
            # the checked value: 3.0 is 3 (it was accepted here, then read as 0)
            self.max_failures_in_a_row = int(number("hydra.sweeper.max_failures_in_a_row",
                                                    self._max_failures_in_a_row, 0, integer=True))
        pruner = self.pruner
        prune_on = (self.config.get("study") or {}).get("prune_on")
        if prune_on and (pruner is None or isinstance(pruner, optuna.pruners.NopPruner)):
            log.warning("study.prune_on=%s is set but hydra.sweeper.pruner is not: nothing will "
                        "be pruned", prune_on)
        if pruner is not None and not isinstance(pruner, optuna.pruners.NopPruner):
            name = type(pruner).__name__
            if len(directions) > 1:
                raise ConfigError("hydra.sweeper.pruner", name, "no pruner on a multi-objective "
                                  f"study (direction={list(directions)}): pruning needs a "
                                  "single-objective study")
            limit = (self.config.get("trainer") or {}).get("limit_val_batches")
            if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit == 0:
                raise ConfigError("trainer.limit_val_batches", limit, "more than 0 with a pruner "
                                  f"({name} reads study.prune_on at each validation)")
        self._build_grid_sampler(space)
        # one dry trial on a copy of the sampler, in memory: the sampler's own checks run
        try:
            sampler = copy.deepcopy(self.sampler)
        except TypeError:  # it holds a lock (Optuna's GA samplers, NSGA-II/III): a fresh one
            sampler = self.sampler_factory() if self.sampler_factory else self.sampler
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dry = optuna.create_study(directions=list(directions), sampler=sampler)
                trial = dry.ask()
                self._configure_trials([trial], space, fixed, fixed_overrides)
                dry.tell(trial, [0.0] * len(directions))
        except Exception as e:
            raise ConfigError("hydra.sweeper.sampler", type(self.sampler).__name__,
                              f"a sampler for this study (direction={list(directions)}, "
                              f"params {sorted(space)})",
                              f"{type(e).__name__}: {e}"[:300]) from None
        finally:
            optuna.logging.set_verbosity(verbosity)

    def _build_grid_sampler(self, space: dict) -> None:
        """``hydra/sweeper/sampler=grid`` is a partial GridSampler that needs the search space
        (as the stock sweeper builds it): choices only, and n_trials at most the grid's size."""
        import functools

        if not (isinstance(self.sampler, functools.partial)
                and self.sampler.func is optuna.samplers.GridSampler):
            return
        try:
            grid = {k: self._to_grid_sampler_choices(d) for k, d in space.items()}
            self.sampler = self.sampler(grid)
        except (ValueError, TypeError) as e:
            raise ConfigError("hydra.sweeper.sampler", "GridSampler", "a sampler for this search "
                              f"space (params {sorted(space)})", f"{e} Sweep choice(...) or "
                              "range(...) with the grid sampler") from None
        self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))

    def _check_storage(self) -> None:
        """The Optuna storage URL is well formed and its database answers (before anything is
        written anywhere)."""
        if self.storage is None:  # in memory
            return
        key = ("hydra.sweeper.storage", "an Optuna RDB URL such as sqlite:///optuna.db or "
               "postgresql://user@host/db, of a reachable database")
        if not isinstance(self.storage, str) or "://" not in self.storage:
            raise ConfigError(key[0], self.storage, key[1])
        check_store(self.storage, key)

    def _check_parent(self, study: optuna.Study) -> None:
        """An existing study's MLflow parent run (its user attribute
        :data:`ATTR_PARENT_RUN_ID`) was not soft-deleted (``mlflow runs delete``): a deleted
        run takes no more children, so resuming is a ConfigError on ``study.name`` naming the
        run and how to restore it, raised before the study is written. A run this store does
        not have, or cannot read, is no error here (study_parent says what is wrong)."""
        from mlflow.tracking import MlflowClient

        run_id = study.user_attrs.get(ATTR_PARENT_RUN_ID)
        if not run_id:
            return
        uri = sweep_settings(self.config)["uri"]
        try:
            run = MlflowClient(tracking_uri=uri).get_run(str(run_id))
        except Exception as e:  # noqa: BLE001 - study_parent says what is wrong
            log.debug("could not check the parent run of study %r: %s", study.study_name, e)
            return
        if run.info.lifecycle_stage == "deleted":
            raise deleted_run("study.name", study.study_name, uri, str(run_id),
                              "a study whose MLflow parent run is active (not deleted)",
                              "choose another study.name for a new study")

    def _load_study(self, directions: Sequence[str], names: Sequence[str], space: dict,
                    fixed: dict, texts: dict[str, str]) -> tuple[optuna.Study, bool]:
        """The sweep's study, and whether this worker created it (exactly one worker does: it
        opens the study's parent run). An existing study is checked against this sweep's
        directions, objectives and search space (``space``, ``fixed``: the sweep's
        distributions and fixed keys; ``texts``: its overrides as typed, :func:`override_texts`)
        and its MLflow parent run (:meth:`_check_parent`) before anything is written: a
        ConfigError otherwise."""
        import random
        import time

        try:
            for attempt in range(4):
                try:
                    with creation_lock(self.storage or ""):  # workers starting together: SQLite
                        try:  # exactly one worker creates the study
                            study = optuna.create_study(
                                study_name=self.study_name, storage=storage(self.storage),
                                sampler=self.sampler, pruner=self.pruner,
                                directions=list(directions))
                            created = True
                        except optuna.exceptions.DuplicatedStudyError:
                            log.info("Using the existing study %r", self.study_name)
                            study = optuna.load_study(
                                study_name=self.study_name, storage=storage(self.storage),
                                sampler=self.sampler, pruner=self.pruner)
                            created = False
                    break
                except Exception as e:  # a database server: another worker created the tables
                    race = ("already exists" in str(e) or "duplicate key" in str(e)
                            or "UniqueViolation" in str(e))
                    if not race or attempt == 3:
                        raise
                    time.sleep(0.5 + random.random())
        except (ValueError, ImportError, ModuleNotFoundError) as e:
            raise ConfigError("hydra.sweeper.storage", self.storage,
                              f"an Optuna RDB URL such as sqlite:///optuna.db or "
                              f"postgresql://user@host/db ({type(e).__name__}: {e})") from None
        except Exception as e:  # sqlalchemy OperationalError: server down, bad path
            raise store_error(str(self.storage), e, ("hydra.sweeper.storage",
                                                     "a reachable Optuna storage")) from None
        if not created:
            self._check_parent(study)
        stored = [d.name.lower() for d in study.directions]
        if stored != [d.lower() for d in directions]:
            raise ConfigError("hydra.sweeper.direction", list(directions),
                              f"the directions of the existing study {self.study_name!r}: {stored} "
                              "(use another study.name for new objectives)")
        old = study.user_attrs.get("objectives")
        if old is not None and list(old) != list(names):
            raise ConfigError("objective", list(names),
                              f"the objectives of the existing study {self.study_name!r}: {old}")
        if not created:
            check_resumed_space(study, space, fixed, texts)
        if old is None:
            study.set_user_attr("objectives", list(names))
        name_objectives(study, names)
        return study, created

    def _say_if_done(self, study: optuna.Study) -> None:
        """A rerun of a finished study has nothing to run: it says so, and the sweep only
        writes its summary again."""
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        if done >= self.n_trials:
            log.info("[%s] the study already has its %d finished trials (hydra.sweeper.n_trials="
                     "%d): nothing to run; raise n_trials to add more", study.study_name, done,
                     self.n_trials)

    def _optimize(self, study: optuna.Study, arguments: list[str], directions: Sequence[str],
                  names: Sequence[str]) -> None:
        space, fixed, fixed_overrides = self._search_space(arguments)
        fail_stale_trials(study)
        me = owner()
        failures = in_a_row = 0
        while True:
            # count, pick design points and ask as one step for the workers of this machine:
            # on SQLite an flock on the study's file, so workers that ask at the same moment
            # neither start more than n_trials nor run one design point twice (a database
            # server has no such lock: see next_design_point)
            with creation_lock(self.storage or ""):
                # one read: a trial that finishes between two reads would be in neither count
                to_go = self.n_trials - len(study.get_trials(
                    deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING)))
                if to_go <= 0:
                    break
                trials = [ask_owned(study, me, self.design)
                          for _ in range(min(to_go, self.n_jobs))]
            try:
                overrides = self._configure_trials(trials, space, fixed, fixed_overrides)
                # a trial's folder is named by its number, which is unique in the study: workers
                # that start in the same second share a sweep folder, and their job numbers repeat
                self.launcher.per_job = [[f"study.trial={t.number}",
                                          f"hydra.sweep.subdir={t.number}"] for t in trials]
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
                for trial, ret in zip(trials, returns):
                    ok = self._tell(study, trial, ret, directions)
                    failures += not ok
                    in_a_row = 0 if ok else in_a_row + 1
                    done = len(study.get_trials(deepcopy=False, states=FINISHED))
                    self._progress(study, trial, done, names)
            except BaseException as e:  # Ctrl-C, SIGTERM, a machine fault: the trials end
                # with the sweep, and so do their runs (a parallel launcher's killed workers
                # could not end them)
                fail_unfinished(study, trials, e)
                self._close_launched(e, [t.number for t in trials])
                raise
            if failures and failures / max(1, self.job_idx) > self.max_failure_rate:
                raise RuntimeError(f"{failures} of {self.job_idx} trials failed, more than "
                                   f"hydra.sweeper.max_failure_rate={self.max_failure_rate}")
            if self.max_failures_in_a_row and in_a_row >= self.max_failures_in_a_row:
                last = compat.frozen_trial(study, trials[-1]).user_attrs.get(ATTR_FAIL_REASON)
                raise VaesweepError(f"{in_a_row} trials in a row failed (hydra.sweeper."
                                    f"max_failures_in_a_row={self.max_failures_in_a_row}), the "
                                    f"sweep stops; the last one: {last}")

    def _search_space(self, arguments: list[str]) -> tuple[dict, dict, list]:
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        space, fixed, fixed_overrides = search_space(params_conf)
        for k in fixed:
            space.pop(k, None)
        return space, fixed, fixed_overrides

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any,
              directions: Sequence[str]) -> bool:
        S = optuna.trial.TrialState
        try:
            value = job_value(ret)  # re-raises the job's exception
            values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            if len(values) != len(directions):
                raise ValueError(f"the job returned {len(values)} value(s) for "
                                 f"{len(directions)} direction(s)")
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite objective value(s) {values}")
        except optuna.TrialPruned as e:
            trial.set_user_attr(ATTR_PRUNED_REASON, str(e))
            log.info("[%s] trial %d %s", study.study_name, trial.number, e)
            study.tell(trial, state=S.PRUNED)
            return True
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"[:2000]
            # disk full, read-only: every next trial would fail too. Told first: the trial's
            # FAIL is then written on the same full disk, and its store error (Optuna's
            # misleading "exceeding max length") hid the one-line stop behind tracebacks
            fault = machine_fault(e)
            try:
                trial.set_user_attr(ATTR_FAIL_REASON, reason)
                study.tell(trial, state=S.FAIL)
            except Exception as store_e:
                if not (fault or machine_fault(store_e)):
                    raise
                log.error("Could not mark trial %d FAIL (the next start marks it stale): %s",
                          trial.number, " ".join(str(store_e).split())[:300])
                if not fault:
                    raise VaesweepError(f"trial {trial.number} could not be recorded on a fault "
                                        "of the machine, the sweep stops: "
                                        f"{type(store_e).__name__}: {store_e}"[:600]) from None
            log.warning("Trial %d failed: %s", trial.number, reason)
            if fault:
                raise VaesweepError(f"trial {trial.number} failed on a fault of the machine, "
                                    f"the sweep stops: {reason[:500]}") from None
            return False
        try:
            study.tell(trial, values=values)
        except Exception as store_e:
            if not machine_fault(store_e):
                raise
            raise VaesweepError(f"trial {trial.number} could not be recorded on a fault of the "
                                f"machine, the sweep stops: {type(store_e).__name__}: "
                                f"{store_e}"[:600]) from None
        return True

    def _progress(self, study: optuna.Study, trial: optuna.Trial, done: int,
                  names: Sequence[str]) -> None:
        t = compat.frozen_trial(study, trial)
        shown = (", ".join(f"{n}={v:.4g}" for n, v in zip(names, t.values))
                 if t.values else t.user_attrs.get(ATTR_FAIL_REASON, t.user_attrs.get(ATTR_PRUNED_REASON, "")))
        if len(study.directions) == 1:
            try:
                best = f"best so far: trial {study.best_trial.number} {names[0]}={study.best_value:.4g}"
            except ValueError:
                best = "no finished trial yet"
        else:
            best = f"Pareto set: {len(study.best_trials)} trial(s)"
        log.info("[%s] trial %d %s (%d of %d finished): %s | %s", study.study_name, t.number,
                 t.state.name, done, self.n_trials, shown, best)

    def _summarise(self, study: optuna.Study, parent: Any, names: Sequence[str]) -> None:
        rows = summary_rows(study, names)
        if not rows:
            return
        parent.log_text(json.dumps(rows, indent=1, default=str), "best_trials.json")
        df = study.trials_dataframe()
        parent.log_text(df.to_csv(index=False), "trials.csv")
        best = best_trials(study)
        metrics = {}
        for i, t in enumerate(best):
            pre = "best" if len(best) == 1 else f"pareto_{i}"
            metrics.update({f"{pre}/{n}": v for n, v in zip(names, t.values)})
        parent.log_metrics(metrics)
        if len(best) == 1:
            from mlflow.exceptions import MlflowException
            params = {f"best.{k}": v for k, v in best[0].params.items()}
            params["best.trial"] = best[0].number
            try:
                parent.log_params(params)
            except MlflowException:  # params are immutable: a resumed study found a new best
                set_tags(parent.client, parent.run_id,
                         {f"vaesweep.{k}": v for k, v in params.items()})
        from pathlib import Path
        folder = Path(self.config.hydra.sweep.dir)  # no job ran when the study was finished
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create({"study": study.study_name, "best": rows}),
                       folder / "optimization_results.yaml")


class VaesweepOptunaSweeper(Sweeper):
    """``hydra/sweeper=vaesweep_optuna``: hydra-optuna-sweeper's options plus ``pruner``."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: Any,
                 n_trials: int, n_jobs: int, max_failure_rate: float,
                 custom_search_space: Any, params: Any, pruner: Any = None,
                 max_failures_in_a_row: int = 0, enqueue: Any = None) -> None:
        with user_errors():  # the stock sweeper asserts it, with a traceback
            number("hydra.sweeper.max_failure_rate", max_failure_rate, 0, 1)
        sampler_config = sampler
        sampler = _instantiate("hydra.sweeper.sampler", sampler, SAMPLER_WHITELIST)
        pruner = (_instantiate("hydra.sweeper.pruner", pruner, PRUNER_WHITELIST)
                  if pruner else optuna.pruners.NopPruner())
        extender = (_instantiate("hydra.sweeper.custom_search_space",
                                 {"_target_": custom_search_space, "_partial_": True},
                                 SEARCH_SPACE_WHITELIST) if custom_search_space else None)
        self.sweeper = VaesweepOptunaImpl(sampler, direction, storage, study_name, n_trials,
                                          n_jobs, max_failure_rate, None, params,
                                          pruner=pruner, custom_search_space=extender,
                                          max_failures_in_a_row=max_failures_in_a_row,
                                          enqueue=enqueue, sampler_factory=lambda: _instantiate(
                                              "hydra.sweeper.sampler", sampler_config,
                                              SAMPLER_WHITELIST))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        with user_errors():
            return self.sweeper.sweep(arguments)


# -- Hydra's basic (grid) sweeper ------------------------------------------------------------
class VaesweepBasicSweeper(_ParentMixin, BasicSweeper):
    """``hydra/sweeper=vaesweep_basic``: Hydra's grid sweeper with an MLflow parent run; a
    failed job is logged and the grid goes on."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self._wrap_launcher()

    def sweep(self, arguments: list[str]) -> Any:
        warn_repeated(list(arguments))
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        # a key is swept when its jobs differ in it: a study's grid overridden by one value
        # on the command line (kl.beta_norm=-1) is every job's value, checked as fixed
        values: dict[str, set[str]] = {}
        for job in (j for batch in self.overrides for j in batch):
            for o in job:
                k, _, v = str(o).partition("=")
                values.setdefault(k, set()).add(v)
        swept = [o.get_key_element() for o in overrides if o.is_sweep_override()
                 and len(values.get(o.get_key_element(), ())) > 1]
        space = {}
        for o in overrides:  # every value of each swept key (a glob is Hydra's to expand)
            if o.is_sweep_override() and o.value_type.name != "GLOB_CHOICE_SWEEP" and o.input_line:
                try:
                    values = list(o.sweep_iterator())
                except Exception:
                    continue
                space[o.get_key_element()] = Swept(o.input_line.split("=", 1)[1], values)
        if self.overrides and self.overrides[0]:
            with user_errors():
                self._check_first_job(self.overrides[0][0], swept, space)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        n_jobs = sum(len(b) for b in self.overrides)
        returns, idx, failed = [], 0, 0
        with self._open_parent(None, resume=False) as parent, sweep_progress(
                self.config, self.sweep_name, n_jobs):
            while not self.is_done():
                batch = self.get_job_batch()
                self.validate_batch_is_legal(batch)
                try:
                    results = self.launcher.launch(batch, initial_job_idx=idx)
                except BaseException as e:  # Ctrl-C, SIGTERM, a dead worker: its runs end
                    self._close_launched(e)
                    raise
                for r, ov in zip(results, batch):
                    try:
                        value = job_value(r)
                        log.info("[%s] job %d of %d: %s -> %s", self.sweep_name, idx + 1,
                                 n_jobs, " ".join(ov), value)
                    except Exception as e:
                        failed += 1
                        log.warning("[%s] job %d of %d failed (%s): %s: %s", self.sweep_name,
                                    idx + 1, n_jobs, " ".join(ov), type(e).__name__, e)
                    idx += 1
                returns.append(results)
            parent.log_metrics({"sweep/jobs": idx, "sweep/failed": failed})
            set_note(parent.client, parent.run_id, grid_note(self.sweep_name, idx, failed))
        return returns
