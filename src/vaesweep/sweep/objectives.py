"""Optuna's side of a study's objectives: their names, stored on the study.

optuna-dashboard, ``Study.trials_dataframe()`` (columns ``values_<name>``) and Optuna's Pareto
plot label the objectives with ``Study.metric_names``; a study without them shows "0", "1".
"""
from __future__ import annotations

import warnings
from typing import Sequence

import optuna


def name_objectives(study: optuna.Study, names: Sequence[str]) -> None:
    """Stores ``names`` (metric names of docs/pages/metrics.md, one per direction) as the study's metric
    names, unless it has them already (a resumed study, or another worker's)."""
    if study.metric_names == list(names):
        return
    with warnings.catch_warnings():
        # Study.set_metric_names is marked experimental (Optuna 3.2 to 5.0). It only stores the
        # labels in a study system attribute; tests/test_sweeps.py reads them back through
        # trials_dataframe(), so an interface change fails a test, not a user's sweep.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))
