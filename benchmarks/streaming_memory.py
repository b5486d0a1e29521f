"""Peak memory of `tersim run` on an image folder does not grow with the number of images; cost per image.

    python benchmarks/streaming_memory.py [--small 200] [--large 2000] [--resnet50-images 16]

1. Generates two folders of small random PNGs (10 classes, 24..40 px, a fixed seed): `--small` and `--large`
   images. Runs `python -m tersim run` on each (squeezenet1_1 exported at 3x64x64, `--preprocess resize=64,64`,
   2 DataLoader workers, analytic timing) in a fresh child process and reads its peak RSS
   (getrusage RUSAGE_CHILDREN: the largest of the run and its loader workers). The ratio large/small is the
   figure: streaming keeps it near 1 (the old pipeline held every image and output in memory).
2. Times `tersim run hw resnet50 --data FOLDER --preprocess imagenet` (random weights, 224x224, integer engine
   and FP32 reference, analytic timing) on `--resnet50-images` images and reports seconds per 1,000 images.
Figures go to reports/streaming_memory.txt (also printed). On a shared machine read the ratio and the CPU seconds,
not the wall seconds.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def make_folder(root: Path, count: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class_{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(24, 41, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return root


def peak_rss_mib(args: list[str]) -> tuple[float, float, float]:
    """(peak RSS in MiB, wall seconds, CPU seconds) of `python -m tersim ARGS` run in a fresh child of a fresh
    process. CPU time (user + system, the run and its loader workers) is what a shared machine does not inflate."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             f"subprocess.run([sys.executable, '-m', 'tersim', *{args!r}], check=True, stdout=subprocess.DEVNULL); "
             "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(r.ru_maxrss, time.perf_counter() - t, r.ru_utime + r.ru_stime)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True)
    kib, seconds, cpu = out.stdout.split()
    return int(kib) / 1024, float(seconds), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--resnet50-images", type=int, default=16)
    opts = parser.parse_args()
    hw = str(ROOT / "hw_configs/default.yaml")
    lines = [f"streaming_memory.py: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "squeezenet_64.pt2"
        subprocess.run([sys.executable, "-m", "tersim", "export-zoo", "squeezenet1_1", "-o", str(model),
                        "--input-shape", "3,64,64"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        rss = {}
        for count in (opts.small, opts.large):
            folder = make_folder(tmp / f"images_{count}", count)
            rss[count], seconds, cpu = peak_rss_mib(["run", hw, str(model), "--data", str(folder), "--preprocess",
                                                "resize=64,64", "--timing", "analytic", "--quiet",
                                                "--out", str(tmp / "out")])
            lines.append(f"  {count:5d} images (squeezenet1_1 @ 3x64x64): peak RSS {rss[count]:7.1f} MiB, "
                         f"{seconds:6.1f} s wall, {cpu:6.1f} s CPU ({cpu / count * 1000:.1f} ms CPU/image)")
        ratio = rss[opts.large] / rss[opts.small]
        lines.append(f"  peak RSS ratio {opts.large}/{opts.small} images: {ratio:.3f} "
                     f"({'within' if abs(ratio - 1) <= 0.10 else 'NOT within'} 10%)")
        folder = make_folder(tmp / "imagenet_like", opts.resnet50_images, seed=1)
        _, seconds, cpu = peak_rss_mib(["run", hw, "resnet50", "--data", str(folder), "--preprocess", "imagenet",
                                   "--timing", "analytic", "--quiet", "--out", str(tmp / "out")])
        per_1000 = cpu / opts.resnet50_images * 1000
        lines.append(f"  resnet50 @ 224 (imagenet preprocessing, FP32 + integer engine): {opts.resnet50_images} "
                     f"images in {seconds:.1f} s wall, {cpu:.1f} s CPU incl. start-up -> {per_1000 / 60:.0f} "
                     "CPU-minutes per 1,000 images (serial; --jobs 2 on 2 idle cores about halves the wall time)")
    lines.append(f"  load average {os.getloadavg()[0]:.1f} at end")
    text = "\n".join(lines)
    print(text)
    sys.path.insert(0, str(ROOT))
    from tersim.files import write_text_atomic  # the project's atomic writer (creates reports/)

    write_text_atomic(ROOT / "reports/streaming_memory.txt", text + "\n")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")
