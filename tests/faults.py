"""Faults of the machine for the tests: a read-only folder and a nearly full disk.

Both are real file systems: a tmpfs mounted read-only (root ignores permission bits, so a
``chmod`` is no test for root) and a tmpfs of a few hundred KiB. Mounting needs root (the CI
runs as root); elsewhere the read-only folder falls back to ``chmod 555`` and the full disk is
skipped with the reason.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def _mount(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                         capture_output=True, text=True)
    return res.returncode == 0


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[bool]:
    """A tmpfs mounted at ``path`` with ``options`` for the duration; yields whether it is."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _mount(path, options)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path) -> Iterator[Path]:
    path = tmp_path / "read_only"
    with tmpfs(path, "ro,size=64k") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs, and root writes through chmod 555")
            path.chmod(0o555)
        yield path
        if not mounted:
            path.chmod(0o755)


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A folder on a 512 KiB file system: too small for an MLflow database (~1 MB)."""
    path = tmp_path / "full"
    with tmpfs(path, "size=512k") as mounted:
        if not mounted:
            pytest.skip("a full disk is simulated with a small tmpfs, which needs root to mount")
        yield path
