"""notebooks/tradeoff.ipynb runs top to bottom (nbclient, a kernel on this venv's Python)
against the tiny sweeps, shows its figures and the generated answer, and is kept in the
repository without outputs."""
from __future__ import annotations

import json
import sys

import nbformat
import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "tradeoff.ipynb"
KERNEL = "vaesweep-test"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec that starts ipykernel with this interpreter (the venv's), found through
    JUPYTER_PATH: never a kernel of another Python installed on the machine."""
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vaesweep (test)", "language": "python"}))
    return d


def test_notebook_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    text = "".join(c.source for c in code)
    # the notebook calls the report's functions, it does not draw its own
    for call in ("load_sweep(", "plots.rate_distortion(", "plots.metrics_vs_weight(",
                 "analysis.reduction_pairs(", "plots.dynamics(", "plots.run_pictures(",
                 "answer("):
        assert call in text
    assert "VAESWEEP_TRACKING_URI" in text and "VAESWEEP_SWEEP" in text


@pytest.mark.slow
@pytest.mark.parametrize("sweep", ["quick", "beta_norm_grid"])
def test_notebook_runs_against_the_tiny_sweeps(tiny_sweeps, kernel_dir, monkeypatch, sweep):
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("VAESWEEP_TRACKING_URI", tiny_sweeps.uri)
    monkeypatch.setenv("VAESWEEP_STORAGE", tiny_sweeps.storage)
    monkeypatch.setenv("VAESWEEP_SWEEP", sweep)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # raises CellExecutionError, with the cell and its traceback, if any cell fails
    NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                   resources={"metadata": {"path": str(tiny_sweeps.dir)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # the plane, the weight figure, pictures of Pareto runs (+ 2 dynamics figures for the grid)
    assert len(images) >= (6 if sweep == "beta_norm_grid" else 3)
    text = "".join(o.get("text", "") for o in outputs)
    assert f"runs of {sweep!r}" in text
    if sweep == "quick":
        assert "no sum/mean pairs" in text and "constant KL weight" in text
    else:
        assert "4 of 4 pairs land on the same point" in text
    answer = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert answer and "The answer (generated from the numbers)" in answer[-1]
    assert "Pareto front" in answer[-1]
