"""The metric names of DESIGN §4 and the tags that objectives, reports and notebooks rely on."""
from __future__ import annotations

import re

STAGES = ("train", "val", "test")
TERMS = ("loss", "distortion", "rate", "elbo", "beta_eff")
TEST_METRICS = (
    "iwae_nll", "mse", "psnr", "mig", "sap", "dci_disentanglement", "dci_completeness",
    "dci_informativeness", "factorvae_score", "betavae_score", "linear_probe_acc", "knn_acc",
    "total_correlation", "mutual_info", "active_units",
)
VAL_METRICS = ("active_units", "sigma", "implied_sigma")
#: metrics a sweep may optimise: the terms of every stage, the val extras, the test metrics
METRIC_NAMES = tuple(
    [f"{s}/{t}" for s in STAGES for t in TERMS]
    + [f"val/{m}" for m in VAL_METRICS] + [f"test/{m}" for m in TEST_METRICS]
    + ["system/images_per_second", "system/page_faults_per_step", "system/sys_seconds_per_step"])
_KL_DIM = re.compile(r"^val/kl_dim_\d+$")


def is_metric_name(name: str) -> bool:
    return name in METRIC_NAMES or bool(_KL_DIM.match(name))


#: tag of a run that ended before its KL schedule did (its value says where the schedule stood)
TAG_SCHEDULE_UNFINISHED = "vaesweep.schedule_unfinished"
