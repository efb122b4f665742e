"""Shared by the benchmark scripts: the machine/version header and table printing."""
from __future__ import annotations

import datetime
import os
import platform
from typing import Sequence


def header(title: str) -> str:
    import torch
    import lightning
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [f"# {title}",
             f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"machine: {cpu}, {os.cpu_count()} cores, GPU: {gpu}",
             f"python {platform.python_version()}, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), lightning {lightning.__version__}"]
    return "\n".join(lines)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(out)
