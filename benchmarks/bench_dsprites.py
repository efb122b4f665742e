"""How long procedural dSprites takes to make, store, load and serve.

    python benchmarks/bench_dsprites.py [--root DIR] [--batches 2000] [--threads N]

Prints one table: generation of the full 737,280 images, size on disk, loading the cache
(warm page cache: the file was just written), building a 5,000-image subset, and the time
per batch of 64 from ``VAEDataModule.train_dataloader()``, plus the raw ``ImageSet.batch``
cost of each storage codec (packed bits vs bytes vs float32). ``--root`` defaults to a
temporary directory, removed afterwards.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _per_batch_us(fn, n: int, repeats: int = 5) -> tuple[float, float]:
    """(best, median) microseconds per call over ``repeats`` runs of ``n`` calls."""
    for _ in range(min(n, 100)):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return min(runs), statistics.median(runs)


def _loader_us(loader, n: int, repeats: int = 5) -> tuple[float, float]:
    """Steady-state time per batch: the per-epoch shuffle (randperm) is done before timing."""
    runs = []
    n = min(n, len(loader) - 1)
    for _ in range(repeats):
        it = iter(loader)
        next(it)
        t = time.perf_counter()
        for _ in range(n):
            next(it)
        runs.append((time.perf_counter() - t) / n * 1e6)
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="cache folder (default: a temporary one)")
    parser.add_argument("--batches", type=int, default=2000, help="batches per timing run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vaesweep.data import VAEDataModule, build_imageset, dsprites
    from vaesweep.data.base import ImageSet

    tmp = None
    root = args.root
    if root is None:
        tmp = root = Path(tempfile.mkdtemp(prefix="bench_dsprites_"))
    rows: list[tuple[str, str]] = []
    try:
        dsprites.templates.cache_clear()
        dsprites._canvases.cache_clear()
        t = time.perf_counter()
        dsprites.templates()
        t_templates = time.perf_counter() - t
        t = time.perf_counter()
        packed = dsprites.generate_packed(progress=False)
        t_generate = time.perf_counter() - t
        rows.append(("generate full set (720 templates + 737,280 packed images)", f"{t_templates + t_generate:.2f} s"))
        rows.append(("  of which templates", f"{t_templates:.2f} s"))
        path = dsprites.cache_path(root)
        path.unlink(missing_ok=True)
        t = time.perf_counter()
        dsprites._save_cache(path, packed)
        rows.append(("write cache (.npy, packed bits)", f"{time.perf_counter() - t:.2f} s"))
        rows.append(("cache size on disk", f"{path.stat().st_size / 1e6:.1f} MB"))
        rows.append(("  (unpacked uint8 would be)", f"{dsprites.N_IMAGES * 4096 / 1e9:.2f} GB"))
        del packed

        dsprites.templates.cache_clear()  # as in a fresh process: the load spot-checks 512 rows
        dsprites._canvases.cache_clear()
        t = time.perf_counter()
        full = build_imageset({"name": "dsprites", "root": str(root)})
        rows.append(("load full set from cache (warm page cache, spot check) -> ImageSet", f"{time.perf_counter() - t:.2f} s"))
        dsprites.templates.cache_clear()
        dsprites._canvases.cache_clear()
        t = time.perf_counter()
        sub = build_imageset({"name": "dsprites", "subset": 5000})
        rows.append(("build a 5,000-image subset (rendered directly, no cache)", f"{time.perf_counter() - t:.2f} s"))

        for label, imageset in (("full set, packed bits", full), ("5,000 subset, uint8", sub)):
            dm = VAEDataModule({"name": "dsprites", "batch_size": 64}, imageset)
            best, med = _loader_us(dm.train_dataloader(), args.batches)
            rows.append((f"train_dataloader batch of 64 ({label})", f"{best:.0f} us (median {med:.0f})"))

        # raw ImageSet.batch per codec, same 5,000 images, random batches of 64
        bits = full.data[torch.from_numpy(dsprites.subset_indices(dsprites.N_IMAGES, 5000, 0))]
        codecs = {
            "bits (int64 byte table, then uint8->float32)": ImageSet("b", bits, (1, 64, 64), codec="bits", scale=1.0),
            "uint8 (uint8->float32)": sub,
            "float32 (gather only, 16x the memory of uint8)": ImageSet(
                "f", sub.data.float(), (1, 64, 64), codec="float32"
            ),
        }
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, 5000, (64,), generator=gen) for _ in range(64)]
        counter = iter(range(10**12))
        table = torch.arange(256)[:, None].bitwise_right_shift(torch.arange(7, -1, -1)).bitwise_and(1).float()
        for label, imageset in codecs.items():
            best, med = _per_batch_us(lambda: imageset.batch(batches[next(counter) % 64]), args.batches)
            rows.append((f"ImageSet.batch(64), {label}", f"{best:.0f} us (median {med:.0f})"))
        best, med = _per_batch_us(
            lambda: table[bits[batches[next(counter) % 64]].long()].view(-1, 1, 64, 64), args.batches
        )
        rows.append(("  alternative: (256, 8) float table, advanced indexing", f"{best:.0f} us (median {med:.0f})"))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    import lightning
    import torchvision

    header = [
        f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.system()}",
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), torchvision {torchvision.__version__}, lightning {lightning.__version__}",
        f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    width = max(len(r[0]) for r in rows)
    print("\n".join(header))
    print()
    print(f"| {'step'.ljust(width)} | time / size |")
    print(f"|{'-' * (width + 2)}|-------------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
