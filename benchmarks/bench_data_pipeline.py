"""Images/s of the data pipeline alone: DALI against the DataLoader fallback, same shards, same run.

    python benchmarks/bench_data_pipeline.py                       # CPU: DALI CPU vs DataLoader
    python benchmarks/bench_data_pipeline.py --device gpu          # + DALI "mixed" (nvJPEG) per GPU
    python benchmarks/bench_data_pipeline.py --images 6000 --batch 256 --threads 8 --out /tmp/d.json

Generates `--images` 112x112 JPEGs (quality 95, ~like aligned MS1M faces: smooth shapes plus
noise) in three datasets of two shards each, in a temporary folder, then reads them with each
variant in turn for `--seconds` after `--warmup` batches, `--rounds` times (the table shows each
variant's median round, so a load change on a shared machine hits all variants alike):

- dali-global: `build_dali_loader(order="global")` (Python reads records by key, DALI decodes)
- dali-reader: `build_dali_loader(order="reader")` (`fn.readers.mxnet` reads, DALI decodes)
- torch: `build_torch_loader` (DataLoader, `--threads` worker processes, PIL decode)

All with the random flip and the [-1, 1] normalisation; `--strong` adds the strong augmentation.
On the CPU every variant uses `--threads` threads/processes (default: all cores). With
`--device gpu` the DALI variants decode on the GPU ("mixed") and the batches land in GPU memory;
the torch variant decodes on the CPU and copies. Images/s = batches x batch size / wall time
while iterating the loader (the pipeline alone, no model); CPU ms/image = user + system CPU time
of the process and its DataLoader workers over the same window, per image (independent of other
load on the machine). Prints a table; writes JSON
(default benchmarks/out/data_<host>_<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import sys
import tempfile
import time
from bench_common import cpu_seconds_with_live_children as cpu_seconds
from bench_common import machine_info, write_report

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = ("dali-global", "dali-reader", "torch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000, help="JPEGs generated (three datasets)")
    p.add_argument("--batch", type=int, default=128, help="images per batch")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI threads / DataLoader workers")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="gpu: DALI mixed decode on cuda:0")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS}")
    p.add_argument("--strong", action="store_true", help="strong augmentation on (resize-blur, colour, grey)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per variant and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="the variants are timed in turn this many times; the table shows the median round")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--out", default=None, help="JSON path; default benchmarks/out/data_<host>_<date>.json")
    return p.parse_args(argv)


def face_like(rng, size: int = 112):
    """A smooth image with a few blobs and sensor noise: JPEG size close to aligned face crops."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([rng.uniform(60, 200) + rng.uniform(-60, 60) * x + rng.uniform(-60, 60) * y
                      for _ in range(3)], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        image += ((y - cy) ** 2 + (x - cx) ** 2 < r * r)[..., None] * rng.uniform(-70, 70, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_set(root: str, images: int) -> str:
    import numpy as np
    from PIL import Image

    from recordio_tools.manifest import write_manifest
    from recordio_tools.files import atomic_directory
    from recordio_tools.shards import DatasetWriter

    rng = np.random.default_rng(0)
    infos, folders, offset = [], [], 0
    for d, share in enumerate((0.5, 0.3, 0.2)):
        count, classes = int(images * share), max(2, int(images * share) // 20)
        folder = os.path.join(root, f"ds{d}")
        with atomic_directory(folder) as tmp:
            writer = DatasetWriter(tmp, f"ds{d}", 2, class_offset=offset)
            for i in range(count):
                buf = io.BytesIO()
                Image.fromarray(face_like(rng)).save(buf, "JPEG", quality=95)
                writer.add(i % classes, buf.getvalue())
            infos.append(writer.finish(classes))
        folders.append(folder)
        offset += classes
    write_manifest(os.path.join(root, "train"), infos, folders)
    return os.path.join(root, "train", "manifest.json")


def measure(manifest: str, variant: str, args) -> dict:
    import torch

    from fftrain.data import build_loader

    gpu = args.device == "gpu"
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    options = {"num_workers": args.threads} if variant == "torch" else {
        "num_threads": args.threads, "order": variant.split("-")[1]}
    with build_loader(manifest, backend=variant.split("-")[0], shard_id=0, num_shards=1, device=device,
                      batch_size=args.batch, seed=0, strong_augment=args.strong, **options) as loader:
        stream = (b for _ in iter(int, 1) for b in loader)
        for _ in range(args.warmup):
            next(stream)
        batches, start, cpu_start = 0, time.perf_counter(), cpu_seconds()
        while time.perf_counter() - start < args.seconds:
            batch = next(stream)
            batches += 1
        if gpu:
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    images = batches * args.batch
    return {"variant": variant, "device": args.device, "batches": batches, "seconds": round(elapsed, 3),
            "images_per_s": round(images / elapsed, 1), "cpu_ms_per_image": round(1000 * cpu / images, 3),
            "on": str(batch.images.device)}


def median_round(rows: list[dict]) -> dict:
    return sorted(rows, key=lambda r: r["images_per_s"])[len(rows) // 2]


def main(argv=None) -> None:
    args = parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; available: {list(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as root:
        started = time.perf_counter()
        manifest = make_set(root, args.images)
        rec_bytes = sum(os.path.getsize(os.path.join(folder, name))
                        for folder, _, names in os.walk(root) for name in names if name.endswith(".rec"))
        print(f"generated {args.images} JPEGs in {time.perf_counter() - started:.1f}s "
              f"({rec_bytes / args.images / 1024:.1f} KiB per record)")
        load_before = os.getloadavg()
        rounds = [[measure(manifest, v, args) for v in variants] for _ in range(args.rounds)]
        load_after = os.getloadavg()
    rows = [median_round([r[i] for r in rounds]) for i in range(len(variants))]
    base = next((r["images_per_s"] for r in rows if r["variant"] == "torch"), None)
    print(f"\n{'variant':<12} {'device':<6} {'batches':>8} {'seconds':>8} {'images/s':>10} {'vs torch':>9} "
          f"{'CPU ms/image':>13}")
    for r in rows:
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        print(f"{r['variant']:<12} {r['device']:<6} {r['batches']:>8} {r['seconds']:>8} {r['images_per_s']:>10} "
              f"{ratio:>9} {r['cpu_ms_per_image']:>13}")
    print(f"load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}")
    result = {"benchmark": "data_pipeline", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine_info(), "args": vars(args), "load_average": [load_before, load_after],
              "results": rows, "rounds": rounds}
    write_report(result, args.out, "data")


if __name__ == "__main__":
    main()
