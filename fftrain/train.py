"""fftrain's training entry point (torchrun or plain python).

    # the embedded demo: synthetic six-dataset set, tiny backbone, CPU, ~10 minutes on 2 cores
    torchrun --nproc_per_node=2 fftrain/train.py
    # the launcher: checks before it spawns, then the workers under torchrun's elastic agent
    fftrain train --nproc-per-node 8 --config six_datasets_r50 --set data.manifest=/data/train/manifest.json
    # torchrun from an installed package (this file, in a checkout, is the same)
    torchrun --nproc_per_node=8 -m fftrain.train --config six_datasets_r50 --set data.manifest=...
    # one node, 8 GPUs, the paper setting on your built training set
    torchrun --nproc_per_node=8 fftrain/train.py --config configs/six_datasets_r50.yaml \
        --set data.manifest=/data/train/manifest.json
    # two nodes (run on each; NODE_RANK 0 and 1)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 \
        fftrain/train.py --config configs/six_datasets_r50.yaml
    # a single process, no torchrun
    python fftrain/train.py --set optim.total_steps=100 --set optim.warmup_steps=10 --set optim.lr_milestones=[75,90]

With no --config the embedded demo config (configs/demo_cpu.yaml) is used. `--set key=value`
overrides any config key (YAML syntax for the value); `--resume auto|PATH|''` is
`checkpoint.resume`.
"""

import os
import sys

if __name__ == "__main__":
    # run as a script, this folder is sys.path[0]: drop it, or its packages (data, model, training, ...)
    # would shadow top-level modules of those names
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    from fftrain.commands.train import main

    sys.exit(main())
