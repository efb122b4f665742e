"""Prints which installed releases differ from requirements.lock (for `make test-latest`).

Usage: python .ci/lock_diff.py requirements.lock FREEZE.txt
FREEZE.txt is `pip freeze` output. Prints one line per package whose version differs, and the
packages installed but not locked; exits 0 either way (it informs, the suite decides).
"""
from __future__ import annotations

import re
import sys

from packaging.utils import canonicalize_name

PIN = re.compile(r"(?m)^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def pins(text: str) -> dict[str, str]:
    return {canonicalize_name(k): v for k, v in PIN.findall(text)}


def main(lock_path: str, freeze_path: str) -> None:
    with open(lock_path) as f:
        lock = pins(f.read())
    with open(freeze_path) as f:
        new = pins(f.read())
    moved = [f"  {k}: {lock[k]} -> {new[k]}" for k in sorted(lock) if k in new and new[k] != lock[k]]
    added = [f"  {k}: {new[k]} (not in the lock)" for k in sorted(set(new) - set(lock))]
    print("\n".join(["newer than requirements.lock:", *moved, *added]) if moved or added
          else "the newest releases are the locked ones")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
