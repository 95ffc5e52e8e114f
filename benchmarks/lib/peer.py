"""insightface arcface_torch's head (PartialFC_V2 + CombinedMarginLoss) as a side-by-side arm of the feature-level
experiments: its two source files are fetched at run time, at a pinned commit, into a cache outside the repository
(never committed here), loaded from there, and driven by the product's training step through `PeerHead`.

    source = peer_source()                  # PeerSource(path=...) or PeerSource(missing="why")
    head = PeerHead(source, num_classes, dim, scale=64, margin=0.5, momentum=0.9, weight_decay=5e-4, lr=0.1)

Where the arm departs from arcface_torch: one CPU process (a gloo group of one rank, which PartialFC_V2 requires),
its `.cuda()` calls made no-ops while it runs, and the SGD of its proxies separate from the backbone's (the same
lr, momentum and weight decay each step, as arcface_torch's one SGD over both parameter groups gives).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import urllib.request
import warnings
from dataclasses import dataclass

import torch

REPOSITORY = "deepinsight/insightface"
COMMIT = "7fadd420c2351d0ffa8cac403421c1a3ed733365"
FILES = ("recognition/arcface_torch/partial_fc_v2.py", "recognition/arcface_torch/losses.py")
CACHE_ENV = "FFTRAIN_PEER_CACHE"


@dataclass(frozen=True)
class PeerSource:
    path: str | None = None
    """Folder holding partial_fc_v2.py and losses.py."""
    missing: str | None = None
    """Why the peer's code is not available (the arm is then reported as not run)."""


def cache_dir() -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "fftrain", "peers")
    return os.path.join(root, f"insightface-{COMMIT[:12]}")


def peer_source(timeout: float = 20.0) -> PeerSource:
    """The cached peer files, downloading the missing ones from GitHub at the pinned commit."""
    folder = cache_dir()
    for path in FILES:
        target = os.path.join(folder, os.path.basename(path))
        if os.path.isfile(target):
            continue
        url = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = response.read(1 << 20)
        except OSError as exc:
            return PeerSource(missing=f"{url} not reachable ({exc}); put the file in {folder} or set {CACHE_ENV}")
        os.makedirs(folder, exist_ok=True)
        with open(target + ".part", "wb") as f:
            f.write(body)
        os.replace(target + ".part", target)
    return PeerSource(path=folder)


def _load(folder: str, name: str):
    spec = importlib.util.spec_from_file_location(f"_peer_{name}", os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_single_rank_group() -> None:
    """PartialFC_V2 asserts torch.distributed is initialised: a gloo group of this process alone."""
    import tempfile

    import torch.distributed as dist

    if not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix="fftrain-peer-"), "store")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


@contextlib.contextmanager
def _cuda_calls_stay_on_cpu():
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


class PeerHead(torch.nn.Module):
    """The peer's head behind the product head's interface (`forward`, `step`, `weight`, `num_classes`):
    agnostic over every class (arcface_torch has no dataset-aware softmax)."""

    def __init__(self, source: PeerSource, num_classes: int, embedding_size: int, *, scale: float, margin: float,
                 momentum: float, weight_decay: float, lr: float):
        super().__init__()
        ensure_single_rank_group()
        # its `torch.cuda.amp.autocast(False)` (a no-op here) warns of its deprecation at every step
        warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)
        losses, pfc = _load(source.path, "losses"), _load(source.path, "partial_fc_v2")
        self.pfc = pfc.PartialFC_V2(losses.CombinedMarginLoss(scale, 1.0, margin, 0.0), embedding_size, num_classes,
                                    sample_rate=1.0, fp16=False)
        self.num_classes = num_classes
        self.optimizer = torch.optim.SGD(self.pfc.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    @property
    def weight(self) -> torch.Tensor:
        return self.pfc.weight

    def forward(self, embeddings, labels, dataset_ids=None, *, class_dataset=None, sample_weight=None):
        if class_dataset is not None or sample_weight is not None:
            raise ValueError("the peer head is agnostic over every class and has no sample weights")
        with _cuda_calls_stay_on_cpu():
            return self.pfc(embeddings, labels.clone())

    def step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
