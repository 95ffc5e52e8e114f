"""`fftrain plan`: per-GPU memory of a run and whether it fits (fftrain.capacity).

    fftrain plan --classes 29000000 --gpus 8 --gpu-memory 80 --backbone iresnet50 --batch 128 \
        --embedding 512 --sample-rate 0.1 --dtype bf16 [--fc-storage bf16] [--max-classes]
"""

from __future__ import annotations

from fftrain.capacity import PlanInput, as_dict, format_plan, local_classes, max_classes, plan


def add_plan_parser(subparsers) -> None:
    p = subparsers.add_parser("plan", help="per-GPU memory of a run and whether it fits",
                              description="Capacity planner: per-GPU memory of every part of a run, and whether it fits.")
    p.add_argument("--classes", type=int, required=True, help="fused classes of the run (identities)")
    p.add_argument("--gpus", type=int, default=8, help="ranks the classes are split over (default 8)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="memory per GPU in GiB (default 80)")
    p.add_argument("--backbone", default="iresnet50")
    p.add_argument("--batch", type=int, default=128, help="images per GPU per step (default 128)")
    p.add_argument("--embedding", type=int, default=512)
    p.add_argument("--sample-rate", type=float, default=0.1)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--fc-storage", choices=("fp32", "bf16"), default="fp32",
                   help="FC weight + momentum storage (config head.fc_storage); bf16 halves it")
    p.add_argument("--overhead-gib", type=float, default=2.0, help="CUDA context + NCCL per GPU (assumed)")
    p.add_argument("--max-classes", action="store_true", help="also print the largest class count that fits")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(run=run_plan)


def run_plan(args) -> int:
    import json
    import sys

    problems = [f"--{name} must be > 0" for name, v in (("classes", args.classes), ("gpus", args.gpus),
                ("gpu-memory", args.gpu_memory), ("batch", args.batch), ("embedding", args.embedding)) if v <= 0]
    if not 0 < args.sample_rate <= 1:
        problems.append("--sample-rate must be in (0, 1]")
    if problems:
        print(f"fftrain plan: {problems[0]}", file=sys.stderr)
        return 2
    say = (lambda m: print(f"fftrain plan: {m}", file=sys.stderr, flush=True)) if not args.json else (lambda m: None)
    try:
        say(f"measuring the {args.backbone} step's memory at batch {args.batch} (builds the network once; "
            "up to a minute on CPU) ...")
        inp = PlanInput(classes=args.classes, gpus=args.gpus, gpu_memory_gib=args.gpu_memory, backbone=args.backbone,
                        batch=args.batch, embedding=args.embedding, sample_rate=args.sample_rate, dtype=args.dtype,
                        fc_storage=args.fc_storage, overhead_gib=args.overhead_gib)
        p = plan(inp)
    except ValueError as e:
        print(f"fftrain plan: --backbone: {e}" if "backbone" in str(e) else f"fftrain plan: {e}", file=sys.stderr)
        return 2
    if args.max_classes:
        say("searching the largest class count that fits (with and without fusion) ...")
    best = {"with_fusion": max_classes(inp), "training_only": max_classes(inp, with_fusion=False)} \
        if args.max_classes else None
    if args.json:
        print(json.dumps({**as_dict(p), **({"max_classes": best} if best is not None else {})}, indent=1))
    else:
        print(format_plan(p))
        if best is not None:
            print(f"largest class count that fits: {best['with_fusion']:,} ({local_classes(inp, best['with_fusion']):,} "
                  f"per GPU); without fusion (t2 >= 1), the training step alone: {best['training_only']:,}")
    return 0
