"""Training throughput (images/s) of the whole step, and peak memory against the class count.

    python benchmarks/bench_train_step.py                 # CPU: iresnet_tiny, batch 64, D=512 (~9 min on 2 cores)
    python benchmarks/bench_train_step.py --threads 1     # the same on a CPU shared with other jobs
    python benchmarks/bench_train_step.py --device cuda --backbone iresnet50 --dtype bf16 --batch 128 \
        --classes 100000 --sweep-classes 1000000,2000000,4000000,8000000 --synth default
    python benchmarks/bench_train_step.py --modes memory --sweep-classes 1000 --steps 2 --out /tmp/t.json

The step is `fftrain.training.trainer.Trainer.train_step` itself, on a Trainer built in the benchmark's
process (one rank, no process group): EmbeddingModel (backbone + GRL dataset classifier), the
Partial-FC head (ArcFace s=64 m=0.5, dataset-aware softmax over 6 datasets), SGD momentum 0.9
wd 5e-4, grad clip 5, autocast in `--dtype` ('auto': bf16 on CUDA, fp32 on the CPU) — forward,
head, backward, optimizer step and head.step. Two parts:

1. Throughput (`--modes`) at `--classes` classes and sample rate `--sample-rate`:
   - memory: one fixed batch of random images [B,3,112,112] in [-1,1] and random labels, held on
     the device, fed again each step: the step alone, input costs nothing.
   - dali / torch: the same Trainer fed by its own loader (`TrainingData.make_loader`: the DALI
     pipeline, or the DataLoader fallback with `--workers` processes) over a synthetic set
     (`generate_synthetic_set(--synth)` in a temporary folder, or `--data manifest.json`). The
     head is sized to `--classes`; the set's labels index its first rows, so the head costs
     the same in every mode and dali/memory isolates what the input costs.
2. Sweep (`--sweep-classes` x `--sample-rates`), memory mode: step time and peak memory against
   the class count at sample rate 1.0 and 0.1 (insightface arcface_torch's speed table setting).

Every configuration runs in a fresh subprocess, so its peak memory is its own. CPU: peak RSS
(VmHWM) minus the RSS after imports, before the Trainer is built; CUDA:
torch.cuda.max_memory_allocated (and max_memory_reserved). A timed step is fetching the batch
plus train_step, with no synchronisation between steps (as in the real loop: CUDA is
synchronised once before and once after the timed window, so ms/step is the window over the
steps, not a median of synchronised steps); images/s = timed images / timed wall seconds, after
`--warmup` steps, over `--steps` steps at most or `--max-seconds`. CPU ms/image counts all
threads of the process and its DataLoader workers: on a shared machine it is the figure that
the other load inflates least, provided the process does not oversubscribe the cores (OpenMP
threads spin while they wait, and that spinning is counted: use `--threads 1` on a busy
machine). A fixed in-memory batch is learnt within a few steps (the ArcFace loss drops to 0, as
in insightface's synthetic-data speed test); that does not change the work per step.
Throughput modes are run `--rounds` times in turn; each mode is compared with the memory
run of its own round (the same minute of load), and the summary takes the median over rounds.
A configuration estimated above `--max-gb` (default: the GPU's memory on CUDA, 12 GiB on the CPU)
is skipped. Prints two tables; writes JSON (default
benchmarks/out/train_step_<host>_<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from bench_common import cpu_seconds_with_live_children as cpu_seconds
from bench_common import machine_info, write_report

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = ("memory", "dali", "torch")
NUM_DATASETS = 6  # memory mode: the paper's six datasets, classes split evenly


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: cuda:0")
    p.add_argument("--backbone", default="iresnet_tiny", help="fftrain.model.backbones name (iresnet50, ...)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast dtype as in the trainer; auto = bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="auto: on for CUDA (paper config), off on the CPU (demo config)")
    p.add_argument("--batch", type=int, default=64, help="images per step (one rank)")
    p.add_argument("--embedding-size", type=int, default=512, help="D")
    p.add_argument("--fc-storage", default="fp32", choices=("fp32", "bf16"), help="head.fc_storage of every run")
    p.add_argument("--modes", default=",".join(MODES), help=f"throughput part, comma-separated from {MODES}; "
                   "'' skips it")
    p.add_argument("--classes", type=int, default=10000, help="head classes in the throughput part")
    p.add_argument("--sample-rate", type=float, default=1.0, help="Partial-FC sample rate in the throughput part")
    p.add_argument("--synth", default="tiny", choices=("tiny", "default"),
                   help="synthetic preset generated for the dali/torch modes")
    p.add_argument("--data", default=None, help="a training-set manifest.json instead of the synthetic set")
    p.add_argument("--workers", type=int, default=2, help="DALI threads / DataLoader worker processes")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads in each configuration; 0 = torch's default (all cores)")
    p.add_argument("--rounds", type=int, default=3,
                   help="throughput modes run in turn this many times; the summary is the median over rounds")
    p.add_argument("--sweep-classes", default="10000,100000,1000000",
                   help="comma-separated class counts of the memory sweep; '' skips it")
    p.add_argument("--sample-rates", default="1.0,0.1", help="comma-separated sample rates of the sweep")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps at most")
    p.add_argument("--max-seconds", type=float, default=25.0,
                   help="stop timing a configuration after this many seconds (2 timed steps at least)")
    p.add_argument("--max-gb", type=float, default=None,
                   help="skip configurations estimated above this (GiB); default: the GPU's memory on CUDA, else 12")
    p.add_argument("--out", default=None, help="JSON path; default benchmarks/out/train_step_<host>_<date>.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _default_max_gb(device: str) -> float:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**30
    return 12.0


def estimate_bytes(classes: int, sample_rate: float, dim: int, batch: int, backbone: str) -> int:
    """A rough peak, for the --max-gb guard: torch itself and the backbone (about 1 GiB for a
    small one on the CPU, more for iresnet50), fp32 head weight + momentum (8 D per class), the
    gradient of the sampled rows (4 D), about four float [B, rows] tensors, sampling scores."""
    rows = max(int(classes * sample_rate), batch)
    fixed = (1 if backbone == "iresnet_tiny" else 4) << 30
    return fixed + 8 * dim * classes + (4 * dim + 16 * batch) * rows + 8 * classes


# ---------------------------------------------------------------------------------------------
# one configuration, in its own process


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class InMemoryData:
    """Stands in for `fftrain.data.TrainingData` in memory mode: a label space for `classes`
    classes split evenly over the datasets, and a loader that yields one fixed batch forever."""

    def __init__(self, classes: int, batch_size: int, device, channels_last: bool = False, seed: int = 0):
        import itertools

        import torch

        from fftrain.data import Batch, LabelSpace

        gen = torch.Generator().manual_seed(seed)
        self.labels = LabelSpace(torch.arange(classes) * NUM_DATASETS // classes, device)
        images = torch.rand(batch_size, 3, 112, 112, generator=gen) * 2 - 1
        source = torch.randint(0, classes, (batch_size,), generator=gen).to(device)
        dataset, fused = self.labels.lookup(source)
        images = images.to(device)
        if channels_last:  # as the loader delivers it
            images = images.contiguous(memory_format=torch.channels_last)
        self.batch = Batch(images, source, dataset, fused, epoch=0, step=0)
        self.manifest = None
        self.steps_per_epoch = 1
        self._repeat = itertools.repeat

    @property
    def num_source_classes(self) -> int:
        return self.labels.num_source_classes

    @property
    def num_datasets(self) -> int:
        return self.labels.num_datasets

    def make_loader(self, start_step: int = 0, position: tuple[int, int] | None = None):
        return self._repeat(self.batch)

    def sample_weight(self, batch):
        return None  # every sample weighs 1, as in a set without per-sample weights


def pipeline_data(cfg, ctx, manifest: str, classes: int):
    """The real `TrainingData` over `manifest`, its label space padded to `classes` source
    classes (the extra ones spread over the datasets, never drawn) so the head has that size."""
    import torch

    from fftrain.data import LabelSpace, TrainingData
    from fftrain.data.read_spec import Prepared

    data = TrainingData.from_config(cfg, ctx, manifest)
    table = data.labels.class_dataset.cpu()
    if classes > len(table):
        extra = torch.arange(classes - len(table)) % data.num_datasets
        table = torch.cat([table, extra])
    p = data.prepared
    return TrainingData(cfg, ctx, Prepared(p.manifest, p.records, LabelSpace(table, ctx.device), p.steps))


def build_trainer(cfg_in: dict, output_dir: str):
    """A Trainer for one configuration: the run config the trainer would get, one rank."""
    import torch

    from fftrain.config import (CheckpointConfig, DataConfig, FusionConfig, LogConfig, ModelConfig,
                                PartialFCConfig, TrainConfig)
    from fftrain.distributed import single_process_context
    from fftrain.training.trainer import Trainer

    cuda = cfg_in["device"] == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    channels_last = {"on": True, "off": False, "auto": cuda}[cfg_in["channels_last"]]
    mode = cfg_in["mode"]
    cfg = TrainConfig(
        output_dir=output_dir, device=cfg_in["device"], dtype=cfg_in["dtype"],
        model=ModelConfig(backbone=cfg_in["backbone"], embedding_size=cfg_in["embedding_size"],
                          channels_last=channels_last),
        data=DataConfig(manifest=cfg_in.get("manifest") or "", reader=mode if mode != "memory" else "dali",
                        batch_size=cfg_in["batch"], num_workers=cfg_in["workers"]),
        head=PartialFCConfig(sample_rate=cfg_in["sample_rate"], fc_storage=cfg_in.get("fc_storage", "fp32")),
        fusion=FusionConfig(t2=1.0),  # no fusion: the dataset-aware phase throughout
        checkpoint=CheckpointConfig(every=0, resume=""),
        log=LogConfig(eval_every=0, tensorboard=False))
    ctx = single_process_context(device)
    if mode == "memory":
        data = InMemoryData(cfg_in["classes"], cfg_in["batch"], device, channels_last=channels_last)
    else:
        data = pipeline_data(cfg, ctx, cfg_in["manifest"], cfg_in["classes"])
    return Trainer(cfg, ctx, data), data


def run_one(cfg_in: dict) -> dict:
    """Build, warm up, time; this process's peak memory."""
    import torch

    cuda = cfg_in["device"] == "cuda"
    if cfg_in["threads"] > 0:
        torch.set_num_threads(cfg_in["threads"])
    rss_base = _status_kib("VmRSS") * 1024
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as output_dir:
        started = time.perf_counter()
        trainer, data = build_trainer(cfg_in, output_dir)
        build_s = time.perf_counter() - started
        device = trainer.ctx.device
        sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
        batches = iter(trainer.loader)
        for _ in range(cfg_in["warmup"]):
            trainer.train_step(next(batches))
        sync()
        walls, datas, images = [], [], 0
        start, cpu_start = time.perf_counter(), cpu_seconds()
        while len(walls) < cfg_in["steps"] and (len(walls) < 2 or time.perf_counter() - start < cfg_in["max_seconds"]):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            values = trainer.train_step(batch)
            walls.append(time.perf_counter() - t0)
            datas.append(t1 - t0)
            images += batch.images.shape[0]
        sync()
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        loss = float(values["loss_cls"])
        close = getattr(trainer.loader, "close", None)
        if close is not None:
            close()
    median = lambda v: sorted(v)[len(v) // 2]
    row = {**cfg_in, "classes_head": trainer.head.num_classes, "steps_timed": len(walls),
           "images_per_s": images / elapsed,
           "ms_per_step": 1000 * (elapsed / len(walls) if cuda else median(walls)),
           "data_ms_per_step": 1000 * sum(datas) / len(datas), "cpu_ms_per_step": 1000 * cpu / len(walls),
           "cpu_ms_per_image": 1000 * cpu / images, "build_s": build_s, "loss_cls": loss,
           "head_held_bytes": trainer.head.weight.numel() * trainer.head.weight.element_size()
           + (trainer.head.momentum_buffer.numel() * trainer.head.momentum_buffer.element_size()
              if trainer.head.momentum_buffer is not None else 0),
           "dtype_used": str(trainer.dtype).replace("torch.", ""), "torch_threads": torch.get_num_threads()}
    if cfg_in["mode"] != "memory":
        row["classes_data"] = len(data.prepared.manifest.class_dataset())
    if cuda:
        row["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    else:
        row["peak_rss_bytes"] = _status_kib("VmHWM") * 1024
        row["rss_base_bytes"] = rss_base
        row["peak_bytes"] = row["peak_rss_bytes"] - rss_base
    return row


def run_subprocess(cfg: dict) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", json.dumps(cfg)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {**cfg, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# tables


def _mib(n) -> str:
    return f"{n / 2**20:.0f}"


def throughput_table(rows: list[dict]) -> str:
    """One line per (round, mode); the ratios compare with the memory row of the same round."""
    lines = ["| round | mode | classes | sample rate | steps | ms/step | data ms/step | images/s | CPU ms/image "
             "| peak MiB | images/s vs memory | CPU/image vs memory |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"| {r['round']} | {r['mode']} | {r['classes']:,} | {r['sample_rate']} | "
                         f"{r.get('error', 'skipped')} | | | | | | | |")
            continue
        wall, cpu = (f"{x:.2f}" if x is not None else "-" for x in vs_memory(r, rows))
        lines.append(f"| {r['round']} | {r['mode']} | {r['classes_head']:,} | {r['sample_rate']} | "
                     f"{r['steps_timed']} | {r['ms_per_step']:.0f} | {r['data_ms_per_step']:.1f} | "
                     f"{r['images_per_s']:.1f} | {r['cpu_ms_per_image']:.1f} | {_mib(r['peak_bytes'])} | "
                     f"{wall} | {cpu} |")
    return "\n".join(lines)


def vs_memory(row: dict, rows: list[dict]) -> tuple[float | None, float | None]:
    """(images/s, CPU ms/image) of `row` over those of the memory row of its round."""
    memory = next((r for r in rows if r["mode"] == "memory" and r["round"] == row["round"] and "images_per_s" in r),
                  None)
    if memory is None or "images_per_s" not in row:
        return None, None
    return row["images_per_s"] / memory["images_per_s"], row["cpu_ms_per_image"] / memory["cpu_ms_per_image"]


def throughput_summary(rows: list[dict], modes: list[str]) -> dict:
    """Per mode, the median over rounds of images/s, CPU ms/image and the two ratios to memory."""
    median = lambda v: statistics.median(v) if v else None
    summary = {}
    for mode in modes:
        done = [r for r in rows if r["mode"] == mode and "images_per_s" in r]
        ratios = [vs_memory(r, rows) for r in done]
        summary[mode] = {"rounds": len(done), "images_per_s": median([r["images_per_s"] for r in done]),
                         "cpu_ms_per_image": median([r["cpu_ms_per_image"] for r in done]),
                         "images_per_s_vs_memory": median([w for w, _ in ratios if w is not None]),
                         "cpu_per_image_vs_memory": median([c for _, c in ratios if c is not None])}
    return summary


def summary_table(summary: dict) -> str:
    lines = ["| mode | rounds | median images/s | median CPU ms/image | images/s vs memory (median of rounds) "
             "| CPU/image vs memory (median of rounds) |", "|---|---:|---:|---:|---:|---:|"]
    fmt = lambda x, spec: format(x, spec) if x is not None else "-"
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['rounds']} | {fmt(s['images_per_s'], '.1f')} | "
                     f"{fmt(s['cpu_ms_per_image'], '.2f')} | {fmt(s['images_per_s_vs_memory'], '.2f')} | "
                     f"{fmt(s['cpu_per_image_vs_memory'], '.2f')} |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    full = {r["classes"]: r for r in rows if r["sample_rate"] == 1.0 and "images_per_s" in r}
    lines = ["| classes | sample rate | steps | ms/step | CPU ms/step | images/s | peak MiB | head held MiB "
             "| peak vs 1.0 | CPU time vs 1.0 |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"| {r['classes']:,} | {r['sample_rate']} | {r.get('error', 'skipped')} | | | | | | | |")
            continue
        f = full.get(r["classes"])
        key = "cpu_ms_per_step" if r["device"] == "cpu" else "ms_per_step"
        pm = f"{r['peak_bytes'] / f['peak_bytes']:.2f}" if f else "-"
        pt = f"{r[key] / f[key]:.2f}" if f else "-"
        lines.append(f"| {r['classes']:,} | {r['sample_rate']} | {r['steps_timed']} | {r['ms_per_step']:.0f} | "
                     f"{r['cpu_ms_per_step']:.0f} | {r['images_per_s']:.1f} | {_mib(r['peak_bytes'])} | "
                     f"{_mib(r['head_held_bytes'])} | {pm} | {pt} |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    return {**machine_info(), "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return {}
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; available: {list(MODES)}")
    sweep_classes = [int(c) for c in args.sweep_classes.split(",") if c]
    rates = [float(r) for r in args.sample_rates.split(",") if r]
    if any(not 0 < r <= 1 for r in rates + [args.sample_rate]):
        raise SystemExit(f"sample rates must be in (0, 1], got {rates + [args.sample_rate]}")
    common = {"device": args.device, "backbone": args.backbone, "dtype": args.dtype,
              "channels_last": args.channels_last, "batch": args.batch, "embedding_size": args.embedding_size,
              "workers": args.workers, "threads": args.threads, "warmup": args.warmup, "steps": args.steps,
              "max_seconds": args.max_seconds, "fc_storage": args.fc_storage}

    if args.max_gb is None:
        args.max_gb = _default_max_gb(args.device)

    def guarded(cfg: dict) -> dict:
        est = estimate_bytes(cfg["classes"], cfg["sample_rate"], args.embedding_size, args.batch, args.backbone)
        if est > args.max_gb * 2**30:
            return {**cfg, "error": f"skipped: est. {est / 2**30:.1f} GiB > --max-gb"}
        return run_subprocess(cfg)

    load_before = os.getloadavg()
    started = time.perf_counter()
    throughput = []
    with tempfile.TemporaryDirectory(prefix="bench_train_step_data_") as root:
        manifest = args.data
        if any(m != "memory" for m in modes) and manifest is None:
            from recordio_tools.synthetic import generate_synthetic_set, synthetic_manifest_path

            t0 = time.perf_counter()
            generate_synthetic_set(os.path.join(root, "synth"), preset=args.synth, seed=0, progress=False)
            manifest = synthetic_manifest_path(os.path.join(root, "synth"))
            print(f"generated the synthetic set ({args.synth}) in {time.perf_counter() - t0:.1f}s", flush=True)
        for round_ in range(args.rounds if modes else 0):
            for mode in modes:
                cfg = {**common, "mode": mode, "classes": args.classes, "sample_rate": args.sample_rate,
                       "manifest": manifest if mode != "memory" else None, "round": round_}
                throughput.append(guarded(cfg))
                print(throughput_table(throughput).splitlines()[-1], flush=True)
    summary = throughput_summary(throughput, modes)
    sweep = []
    for classes in sweep_classes:
        for rate in rates:
            sweep.append(guarded({**common, "mode": "memory", "classes": classes, "sample_rate": rate,
                                  "manifest": None}))
            print("sweep: " + sweep_table(sweep[-1:]).splitlines()[-1], flush=True)
    load_after = os.getloadavg()
    report = {"benchmark": "train_step", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": shlex.join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
              "machine": machine(), "args": vars(args), "load_average": [load_before, load_after],
              "seconds": round(time.perf_counter() - started, 1), "throughput": throughput,
              "throughput_summary": summary, "sweep": sweep}
    if throughput:
        print(f"\nThroughput: {args.backbone}, batch {args.batch}, D={args.embedding_size}, {args.device}")
        print(throughput_table(throughput))
        print()
        print(summary_table(summary))
    if sweep:
        print(f"\nClass-count sweep (memory mode): {args.backbone}, batch {args.batch}, D={args.embedding_size}")
        print(sweep_table(sweep))
    print(f"load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}; "
          f"{report['seconds']:.0f} s in all")
    write_report(report, args.out, "train_step")
    return report


if __name__ == "__main__":
    main()
