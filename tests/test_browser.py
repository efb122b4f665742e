"""The MLflow UI, as a person uses it: an ``mlflow server`` on 127.0.0.1 over the tiny sweeps'
tracking store, opened in headless Chromium through Playwright. The sweep's parent run shows
its Pareto metrics, its child runs and the report's main plot; a child run shows its test
metrics, its kl.beta_norm param and its reconstructions picture; the experiment opens on its
runs table (MLflow's "Model training" view, not the GenAI overview) with the sweep's child
runs under their parent. Screenshots are saved in ``$VAESWEEP_SCREENSHOTS`` when set, else
in each test's temporary folder.

Chromium is Debian's (/usr/bin/chromium); when it is missing the setup installs it with
apt-get, and skips, saying why, when that is not possible. No browser is ever downloaded.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ensure_debian_package, search_runs

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 90_000  # a first page on a busy 2-core machine: the UI's bundle is large

pytestmark = pytest.mark.slow


def ensure_chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing; pytest.skip with the reason
    when it cannot be."""
    return ensure_debian_package("chromium", CHROMIUM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def report_logged(tiny_sweeps, tmp_path_factory):
    """The quick study's report, logged to its parent run (what `vaesweep report` does)."""
    from vaesweep.report import make_report
    return make_report("quick", tiny_sweeps.uri, storage=tiny_sweeps.storage,
                       out=tmp_path_factory.mktemp("report"), max_images=0)


@pytest.fixture(scope="module")
def mlflow_server(tiny_sweeps, report_logged, tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 and a free port over the tiny sweeps' store; stopped
    (with its worker processes) at teardown."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow_server") / "server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "server", "--backend-store-uri", tiny_sweeps.uri, "--host",
           "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as f:
        # its own process group: the server starts uvicorn workers, stopped together below
        proc = subprocess.Popen(cmd, cwd=tiny_sweeps.dir, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n"
                            f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server did not answer in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def shots(tmp_path):
    """Where a test saves its screenshots."""
    folder = os.environ.get("VAESWEEP_SCREENSHOTS")
    if not folder:
        return tmp_path
    path = Path(folder).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    executable = ensure_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def quick_runs(tiny_sweeps):
    runs = [r for r in search_runs(tiny_sweeps.uri) if r.data.tags.get("vaesweep.sweep") == "quick"]
    parent = next(r for r in runs if r.data.tags.get("vaesweep.role") == "parent")
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: int(r.data.tags["vaesweep.trial"]))
    assert len(children) == 4
    return parent, children


def open_run(page, base: str, run, tab: str = "") -> None:
    url = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{tab}"
    page.goto(url, wait_until="load")  # the UI polls forever: never wait for networkidle


def table_value(page, search: str, key: str) -> float:
    """Filter a run page's metrics or params table (placeholder ``search``) to ``key`` and
    read the number shown in its row."""
    box = page.get_by_placeholder(search).first
    box.wait_for()
    box.fill(key)
    row = page.locator(f"xpath=//*[text()='{key}']/ancestor::*[@role='row' or self::tr][1]").first
    row.wait_for()
    row.scroll_into_view_if_needed()
    text = row.inner_text()
    numbers = re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", text.replace(key, ""))
    assert numbers, f"no value shown for {key}: {text!r}"
    return float(numbers[-1])


def show_artifact(page, *names: str) -> None:
    """Click through the artifact tree to a picture and wait until the browser has it
    decoded (the UI fetches it from get-artifact and shows a blob: image)."""
    for name in names[:-1]:
        page.get_by_text(name, exact=True).first.click()
    with page.expect_response(lambda r: "get-artifact" in r.url
                              and names[-1] in r.url.replace("%2F", "/")) as resp:
        page.get_by_text(names[-1], exact=True).first.click()
    assert resp.value.status == 200
    img = page.locator("img[src^='blob:']").first
    img.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=img.element_handle(), timeout=UI_TIMEOUT_MS)
    size = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size[0] > 100 and size[1] > 100, size


def test_parent_run_shows_the_sweep_its_children_and_the_report(page, mlflow_server,
                                                                 quick_runs, shots):
    parent, children = quick_runs
    open_run(page, mlflow_server, parent)
    page.get_by_text("Child runs", exact=True).first.wait_for()
    # every child run is linked from the parent (the links arrive after the page)
    for child in children:
        page.locator(f"a[href$='/runs/{child.info.run_id}']").first.wait_for()
    body = page.inner_text("body")
    assert "sweep:quick" in body and "vaesweep.role" in body
    # its description: the report's answer (the sweep's summary until the report ran)
    page.get_by_text("The answer (generated from the numbers)").first.wait_for()
    shown = table_value(page, "Search metrics", "pareto_0/test/distortion")
    assert shown == pytest.approx(parent.data.metrics["pareto_0/test/distortion"], rel=1e-6)
    page.screenshot(path=str(shots / "parent_overview.png"))
    open_run(page, mlflow_server, parent, "/artifacts")
    show_artifact(page, "report", "rate_distortion.png")
    page.screenshot(path=str(shots / "parent_report_plot.png"))
    # the HTML report itself, shown by the UI in a frame, with its embedded figures
    page.get_by_text("report.html", exact=True).first.click()
    frame = page.frame_locator("iframe").first
    frame.get_by_text("The answer (generated from the numbers)").first.wait_for()
    figure = frame.locator("#fig-rate_distortion img")
    figure.wait_for()
    assert figure.evaluate("img => img.complete && img.naturalWidth") > 100
    page.screenshot(path=str(shots / "parent_report_html.png"))


def test_child_run_shows_metrics_params_and_reconstructions(page, mlflow_server, quick_runs,
                                                            shots):
    _, children = quick_runs
    child = children[0]
    open_run(page, mlflow_server, child)
    page.get_by_text("Parent run", exact=True).first.wait_for()
    # the link back to the sweep's parent run
    link = page.locator(f"a[href$='/runs/{child.data.tags['mlflow.parentRunId']}']").first
    link.wait_for()
    assert link.inner_text() == "sweep:quick"
    for key in ("test/distortion", "test/rate"):
        shown = table_value(page, "Search metrics", key)
        assert shown == pytest.approx(child.data.metrics[key], rel=1e-6), key
    shown = table_value(page, "Search parameters", "kl.beta_norm")
    assert shown == pytest.approx(float(child.data.params["kl.beta_norm"]), rel=1e-9)
    page.get_by_placeholder("Search metrics").first.fill("test/")
    page.screenshot(path=str(shots / "child_overview.png"))
    open_run(page, mlflow_server, child, "/artifacts")
    show_artifact(page, "reconstructions.png")
    shot = shots / "child_reconstructions.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshots in {shots}")


def test_the_experiment_opens_on_its_runs_table_with_the_child_runs(page, mlflow_server,
                                                                    quick_runs, shots):
    """vaesweep's experiments are tagged ``mlflow.experimentKind=custom_model_development``;
    MLflow 3.17's UI shows the view its sidebar switch (GenAI | Model training) selects, and
    ``?workflowType=machine_learning`` (the link docs/pages/getting-started.md gives) selects model training."""
    from mlflow.tracking import MlflowClient
    parent, children = quick_runs
    exp = MlflowClient(tracking_uri=mlflow_server).get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    page.goto(f"{mlflow_server}/#/experiments/{exp.experiment_id}?workflowType=machine_learning",
              wait_until="load")
    row = page.locator("[role=row]", has_text="sweep:quick").first
    row.wait_for()
    body = page.inner_text("body")
    assert "Run Name" in body and "Source" in body, body[:2000]
    assert "No data available" not in body  # not the GenAI overview of traces
    page.screenshot(path=str(shots / "experiment_runs_table.png"))
    # the sweep's runs sit under its parent: expand it, and every child run is listed
    row.locator("[role=gridcell][col-id*='Run Name'] button").first.click()
    for child in children:
        link = page.locator(f"a[href$='/runs/{child.info.run_id}']").first
        link.wait_for()
        assert link.inner_text() == child.info.run_name
    # MLflow's Source column: the command that made the runs
    assert page.locator("[role=gridcell]", has_text="vaesweep").count() >= len(children)
    shot = shots / "experiment_runs_table_children.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
