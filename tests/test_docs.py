"""The documentation site (docs/): it builds with ``mkdocs build --strict`` (a broken link, a
missing page or an API reference that does not resolve is an error), every page is in the
nav, and the command reference names every option each subcommand has."""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

DOCS = ROOT / "docs"
PAGES = DOCS / "pages"
MKDOCS = Path(sys.executable).with_name("mkdocs")


def nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            out.extend(nav_files(value) if isinstance(value, list) else [value])
    return out


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(DOCS / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    # mkdocstrings rendered the docstrings, not just the headings
    assert "Index-code mutual information" in api


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((DOCS / "mkdocs.yml").read_text())
    listed = set(nav_files(config["nav"]))
    pages = {str(p.relative_to(PAGES)) for p in PAGES.rglob("*.md")
             if not p.relative_to(PAGES).parts[0] == "results"}  # the committed study reports
    assert sorted(listed - pages) == [], "nav names pages that do not exist"
    assert sorted(pages - listed) == [], "pages missing from the nav"


@pytest.mark.parametrize("command", ["best", "reproduce", "report", "convert"])
def test_the_command_reference_names_every_option(command):
    from vaesweep.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", out.getvalue())) - {"--help"}
    assert options, out.getvalue()
    section = (PAGES / "reference" / "cli.md").read_text().split(f"## `vaesweep {command}")[1]
    section = section.split("\n## ")[0]
    missing = sorted(o for o in options if f"`{o}`" not in section)
    assert missing == [], f"docs/pages/reference/cli.md does not name {missing}"
