"""Images/s of `recordio_tools convert` and `import` against plain single-process loops, same run.

    python benchmarks/bench_convert.py                               # 2000 images, 250x250, 3 repeats
    python benchmarks/bench_convert.py --images 6000 --workers 1,2,4 --repeats 1 --out /tmp/c.json

Generates `--images` 250x250 JPEGs (smooth shapes plus noise, quality 95, like unaligned face
crops) in `--identities` folders in a temporary folder, then times, each `--repeats` times
(median reported):

- baseline-pil: one process, for each file PIL decode, centre-crop/resize to 112x112, JPEG encode
  (quality 95), RecordWriter.write: the plain loop convert replaces;
- convert-wN: `recordio_tools convert --workers N --shards 4` on the tree (same per-image work,
  plus listing, sharding, dataset.json, atomic rename);
- baseline-copy: one process, RecordReader.read + RecordWriter.write of every record of an
  insightface-layout train.rec (the images convert made, re-packed with a header record and
  identity records): the plain loop import replaces;
- import: `recordio_tools import --shards 4` of that train.rec (header scan, shuffle, copy).

Images/s = images / wall seconds of the whole command or loop (tree and .rec generation not
timed). The ratio column is against baseline-pil. CPU ms/image (user + system, worker processes
included) does not depend on other load on the machine; the 1-minute load average is recorded. Prints a table; writes JSON (default
benchmarks/out/convert_<host>_<date>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import statistics
import sys
import tempfile
import time
from bench_common import cpu_seconds, machine_info, write_report

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="JPEGs generated (default: 2000)")
    p.add_argument("--identities", type=int, default=100, help="identity folders (default: 100)")
    p.add_argument("--size", type=int, default=250, help="side of the generated images, pixels (default: 250)")
    p.add_argument("--workers", default="1,2", help="comma-separated convert --workers values (default: 1,2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported "
                                                          "(default: 3)")
    p.add_argument("--out", default=None, help="JSON path; default benchmarks/out/convert_<host>_<date>.json")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Inputs


def face_like_jpeg(rng, size: int) -> bytes:
    """A smooth image with a few blobs and sensor noise, JPEG quality 95 (~like a face crop)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for _ in range(6):
        cx, cy, radius = rng.uniform(0.1, 0.9, 3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.05 + 0.1 * radius))
        image += blob[..., None] * rng.uniform(40, 200, 3)
    image += rng.normal(0, 6, image.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=95)
    return out.getvalue()


def make_tree(root: str, images: int, identities: int, size: int) -> list[tuple[int, str]]:
    """(label, path) of every generated JPEG, identity folders id_00000..."""
    import numpy as np

    rng = np.random.default_rng(0)
    files = []
    for i in range(images):
        label = i % identities
        folder = os.path.join(root, f"id_{label:05d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:06d}.jpg")
        with open(path, "wb") as f:
            f.write(face_like_jpeg(rng, size))
        files.append((label, path))
    return sorted(files, key=lambda item: item[1])


def make_insightface_rec(dataset: str, rec_path: str) -> int:
    """Re-pack a dataset folder's images as insightface's train.rec (header, images by class, identities)."""
    from recordio_tools.recordio import IRHeader, RecordReader, RecordWriter, class_id_of, pack, unpack

    by_class: dict[int, list[bytes]] = {}
    for name in sorted(os.listdir(dataset)):
        if name.endswith(".rec"):
            with RecordReader(os.path.join(dataset, name)) as reader:
                for _, payload in reader.items():
                    header, image = unpack(payload)
                    by_class.setdefault(class_id_of(header), []).append(image)
    count = sum(len(images) for images in by_class.values())
    first_identity = count + 1
    with RecordWriter(rec_path) as writer:
        writer.write(0, pack(IRHeader(2, [first_identity, first_identity + len(by_class)], 0, 0), b""))
        key, ranges = 1, []
        for label in sorted(by_class):
            start = key
            for image in by_class[label]:
                writer.write(key, pack(IRHeader(0, float(label), key, 0), image))
                key += 1
            ranges.append((start, key))
        for i, (start, stop) in enumerate(ranges):
            writer.write(first_identity + i, pack(IRHeader(2, [start, stop], first_identity + i, 0), b""))
    return count


# ---------------------------------------------------------------------------------------------
# Timed variants


def baseline_pil(files: list[tuple[int, str]], out_dir: str) -> int:
    from PIL import Image

    from recordio_tools.images import square_resize
    from recordio_tools.recordio import RecordWriter, image_header, pack

    with RecordWriter(os.path.join(out_dir, "baseline.rec")) as writer:
        for key, (label, path) in enumerate(files):
            image = square_resize(Image.open(path).convert("RGB"), 112)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=95)
            writer.write(key, pack(image_header(label, key), buffer.getvalue()))
    return len(files)


def baseline_copy(rec_path: str, out_dir: str) -> int:
    from recordio_tools.recordio import RecordReader, RecordWriter

    with RecordReader(rec_path) as reader, RecordWriter(os.path.join(out_dir, "copy.rec")) as writer:
        for key in reader.keys:
            writer.write(key, reader.read(key))
        return len(reader.keys)


def run_command(argv: list[str]) -> None:
    from recordio_tools import cli

    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    if code != 0:
        raise RuntimeError(f"recordio_tools {' '.join(argv)} exited {code}")


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of each of `repeats` calls of `fn`."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), cpu_seconds()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(cpu_seconds() - cpu_started)
    return wall, cpu


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> dict:
    from PIL import features

    return {**machine_info(), "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo"))}


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':<16} {'images':>7} {'median s':>9} {'images/s':>9} {'vs baseline-pil':>16} "
          f"{'CPU ms/image':>13}")
    for row in rows:
        print(f"{row['variant']:<16} {row['images']:>7} {row['median_s']:>9.2f} {row['images_per_s']:>9.0f} "
              f"{row['ratio_vs_baseline_pil']:>15.2f}x {row['cpu_ms_per_image']:>13.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    load_at_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        tree = os.path.join(tmp, "tree")
        print(f"generating {args.images} {args.size}x{args.size} JPEGs in {args.identities} folders ...")
        files = make_tree(tree, args.images, args.identities, args.size)
        variants = [("baseline-pil", len(files), lambda: baseline_pil(files, tmp))]
        variants += [(f"convert-w{n}", len(files),
                      lambda n=n: run_command(["convert", tree, "--out", os.path.join(tmp, f"conv{n}"), "--workers",
                                               str(n), "--shards", "4"])) for n in workers]
        for name, count, fn in variants:
            results.append((name, count, timed(fn, args.repeats)))
        rec = os.path.join(tmp, "insightface", "train.rec")
        os.makedirs(os.path.dirname(rec))
        count = make_insightface_rec(os.path.join(tmp, f"conv{workers[0]}"), rec)
        results.append(("baseline-copy", count, timed(lambda: baseline_copy(rec, tmp), args.repeats)))
        results.append(("import", count, timed(lambda: run_command(["import", rec, "--out", os.path.join(tmp, "imp"),
                                                                    "--shards", "4"]), args.repeats)))
    baseline_rate = None
    rows = []
    for name, count, (seconds, cpu_times) in results:
        median = statistics.median(seconds)
        rate = count / median
        baseline_rate = baseline_rate or rate
        rows.append({"variant": name, "images": count, "seconds": seconds, "median_s": median, "images_per_s": rate,
                     "ratio_vs_baseline_pil": rate / baseline_rate, "cpu_seconds": cpu_times,
                     "cpu_ms_per_image": 1000 * statistics.median(cpu_times) / count})
    print_table(rows)
    today = datetime.date.today().isoformat()
    load = {"start": load_at_start, "end": os.getloadavg()[0]}
    print(f"1-minute load average: {load['start']:.1f} at start, {load['end']:.1f} at end ({os.cpu_count()} cores)")
    report = {"benchmark": "convert", "date": today, "machine": machine(), "load_average_1min": load,
              "args": vars(args), "results": rows}
    write_report(report, args.out, "convert")
    return 0


if __name__ == "__main__":
    sys.exit(main())
