"""Typed run configuration: nested dataclasses, filled from YAML and `--set a.b=value` overrides.

    cfg = load_config("configs/six_datasets_r50.yaml", overrides=["optim.lr=0.01"])

Unknown keys and bad values fail at start naming the key (`ConfigError`). Derived values (the
fusion step from `fusion.t2`, the phases a `method` implies) are properties, never written back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field


from fftrain.errors import UserError, one_line


class ConfigError(UserError, ValueError):
    """A configuration key that is unknown, or a value of the wrong type or out of range."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _either(choices) -> str:
    """"'a', 'b' or 'c'"."""
    quoted = [repr(c) for c in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _check_backbone(name: str) -> None:
    from fftrain.model.backbones import available_backbones, is_backbone  # torch; only when a config is built

    _check(is_backbone(name), "model.backbone", f"unknown backbone {name!r}; available: {available_backbones()}")


@dataclass
class ModelConfig:
    backbone: str = "iresnet50"
    """Backbone name from fftrain.model.backbones (iresnet18/34/50/100, mobilefacenet, a tiny CPU one)."""
    embedding_size: int = 512
    """Dimension of the face embedding (the backbone's output and the FC proxies)."""
    dropout: float = 0.0
    """Dropout before the backbone's embedding layer."""
    channels_last: bool = True
    """Use channels-last memory format for the backbone (faster convolutions on GPU)."""
    grad_checkpoint: bool = False
    """Recompute backbone activations in backward to save memory."""
    compile: bool = False
    """Wrap the backbone in torch.compile."""
    pretrained: str = ""
    """Path to backbone weights (insightface iresnet state_dict keys); empty for random init."""

    def __post_init__(self):
        _check(self.embedding_size > 0, "model.embedding_size", f"must be > 0, got {self.embedding_size}")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _check_backbone(self.backbone)


@dataclass
class DataConfig:
    manifest: str = ""
    """Training-set manifest.json from `recordio_tools build`; empty = the synthetic demo set."""
    synth_dir: str = "data/synth"
    """Where the synthetic six-dataset set is generated when `manifest` is empty and it is missing."""
    synth_preset: str = "default"
    """Size of the generated synthetic set: 'default' (the demo) or 'tiny' (tests)."""
    reader: str = "dali"
    """'dali' (DALI pipeline) or 'torch' (DataLoader fallback, no DALI needed)."""
    order: str = "global"
    """'global': a permutation of all records per (seed, epoch), split over the ranks, so every batch
    mixes all datasets (DALI decodes; exact resume; the torch reader matches it). 'reader': DALI's
    fn.readers.mxnet shard split and buffer shuffle (batches follow the shard layout; DALI only)."""
    batch_size: int = 128
    """Images per rank per step (the global batch is this times the world size)."""
    num_workers: int = 2
    """DALI threads or DataLoader worker processes per rank."""
    augment: bool = False
    """Stronger augmentation (resize-blur, HSV, grey) on top of the random flip."""
    verification: list[str] = field(default_factory=list)
    """insightface .bin pair files to evaluate on (LFW, CFP-FP, AgeDB-30, ...)."""
    bad_records: str = "stop"
    """A training record found corrupt mid-run (broken JPEG structure, bad record header, label out of
    range): 'stop' (end the run naming its shard and key) or 'skip' (warn naming it, and train on
    another image of the same batch in its place)."""

    def __post_init__(self):
        _check(self.reader in ("dali", "torch"), "data.reader", f"must be 'dali' or 'torch', got {self.reader!r}")
        _check(self.order in ("global", "reader"), "data.order", f"must be 'global' or 'reader', got {self.order!r}")
        _check(self.order == "global" or self.reader == "dali", "data.order",
               "'reader' order needs data.reader=dali (the torch reader follows the global order)")
        _check(self.batch_size > 0, "data.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.synth_preset in ("default", "tiny"), "data.synth_preset",
               f"must be 'default' or 'tiny', got {self.synth_preset!r}")
        _check(self.bad_records in ("stop", "skip"), "data.bad_records",
               f"must be 'stop' or 'skip', got {self.bad_records!r}")


@dataclass
class PartialFCConfig:
    margin: str = "arcface"
    """'arcface' (cos(θ+m)), 'cosface' (cosθ-m) or 'combined' (cos(m1·θ+m2)-m3)."""
    scale: float = 64.0
    """s: the logit scale."""
    m: float = 0.5
    """Margin for arcface / cosface."""
    m1: float = 1.0
    """'combined' margin: multiplier of the angle θ."""
    m2: float = 0.5
    """'combined' margin: added to the angle (radians)."""
    m3: float = 0.0
    """'combined' margin: subtracted from the cosine."""
    sample_rate: float = 1.0
    """Fraction of each rank's negative classes sampled per step (1.0 = all, Partial FC)."""
    fc_storage: str = "fp32"
    """FC weight + momentum storage: 'fp32' (8·D bytes per class) or 'bf16' (4·D: 2 KB at D=512; updated in
    fp32 and stochastically rounded back, so steps below bf16's resolution are kept on average)."""
    interclass_threshold: float = 0.0
    """Inter-class filtering (arcface_torch): negatives whose cosine exceeds this are dropped from the
    softmax; 0 keeps all. The 'interclass' method needs it > 0."""
    proxy_norm: float = 0.0
    """> 0: proxies start at this norm and every updated row is renormalised to it after each step, so
    they keep turning under momentum (their angular step is lr * grad / proxy_norm^2); 0: plain SGD
    from N(0, 0.01^2). See benchmarks/RESULTS.md, "Replication", for the measurement."""

    def __post_init__(self):
        _check(self.fc_storage in ("fp32", "bf16"), "head.fc_storage",
               f"must be 'fp32' or 'bf16', got {self.fc_storage!r}")
        _check(self.margin in ("arcface", "cosface", "combined"), "head.margin",
               f"unknown margin {self.margin!r}; available: ['arcface', 'cosface', 'combined']")
        _check(0.0 < self.sample_rate <= 1.0, "head.sample_rate", f"must be in (0, 1], got {self.sample_rate}")
        _check(self.scale > 0, "head.scale", f"must be > 0, got {self.scale}")
        _check(self.m >= 0, "head.m", f"must be >= 0 (a margin), got {self.m}")
        _check(self.m1 > 0, "head.m1", f"must be > 0, got {self.m1}")
        _check(self.m2 >= 0, "head.m2", f"must be >= 0, got {self.m2}")
        _check(self.m3 >= 0, "head.m3", f"must be >= 0, got {self.m3}")
        _check(self.proxy_norm >= 0, "head.proxy_norm", f"must be >= 0 (0: off), got {self.proxy_norm}")
        _check(0.0 <= self.interclass_threshold <= 1.0, "head.interclass_threshold",
               f"must be in [0, 1] (0: off), got {self.interclass_threshold}")


@dataclass
class GRLConfig:
    weight: float = 0.1
    """λ: the gradient-reversal factor of the dataset classifier."""
    start_step: int = 0
    """Step from which the dataset classifier and its reversed gradient are on."""
    hidden: int = 256
    """Width of the dataset classifier's hidden layer."""

    def __post_init__(self):
        _check(self.weight >= 0, "grl.weight", f"must be >= 0, got {self.weight}")
        _check(self.start_step >= 0, "grl.start_step", f"must be >= 0, got {self.start_step}")
        _check(self.hidden >= 1, "grl.hidden", f"must be >= 1 (width of a layer), got {self.hidden}")


FUSION_POLICIES = ("skip", "split", "keep")
"""Fusion's choices for a component chaining two classes of one dataset (fftrain.fusion.components)."""
KNN_BACKENDS = ("auto", "faiss", "torch")
"""The proxy search's backends (fftrain.fusion.knn)."""
KNN_PRECISIONS = ("auto", "fp32", "bf16")
"""The proxy search's score precision: exact fp32, or bf16 scores (tensor cores) with every returned
neighbour re-scored in fp32; 'auto': bf16 with the torch backend on CUDA, fp32 elsewhere."""
NO_VALLEY_CHOICES = ("aware", "agnostic")
"""What a run does when fusion.t1 'auto' finds no valley: no merge, and stay dataset-aware or go agnostic."""


@dataclass
class FusionConfig:
    t1: float | str = 0.7
    """Cosine above which two proxies of different datasets are one identity (> 1 never merges); 'auto': the
    valley of a two-mode fit of every proxy's top-1 cross-dataset cosine at fusion time, within
    [t1_min, t1_max], with the fit's estimated merge precision and recall in the log and the report."""
    t2: float | str = 0.21
    """Fraction of total steps after which fusion runs (>= 1 never fuses: DAIL throughout); 'auto': when the
    proxies are ready (alignment plateaued and the top-1 cross-dataset cosines show two modes with a
    valley), checked every readiness_every steps between t2_floor and t2_ceiling (fusion/readiness.py)."""
    knn_k: int = 10
    """Neighbours searched per proxy."""
    max_component: int = 6
    """Components with more classes than this are reported and not merged."""
    same_dataset_policy: str = "skip"
    """Components chaining two classes of one dataset: 'skip' (don't merge the component), 'split' (drop
    the weakest edges until no dataset repeats), 'keep' (merge anyway)."""
    allow_same_dataset: bool = False
    """Fusion scope: False merges only pairs of different datasets; True searches all pairs, so
    duplicates inside one dataset merge too (the paper's Eq. 4 compares any two proxies, and its
    Tables 4-5 merge classes at r = 0, i.e. prior label noise inside one dataset)."""
    backend: str = "auto"
    """kNN backend: 'auto', 'faiss' or 'torch'."""
    knn_precision: str = "auto"
    """kNN scores: 'fp32' (exact), 'bf16' (the torch backend's matmul in bf16, a wider candidate list,
    every returned similarity re-scored in fp32, so merges match fp32's), 'auto' (bf16 on CUDA with the
    torch backend, fp32 otherwise; faiss searches in fp32)."""
    t1_min: float = 0.5
    """t1 'auto': the lowest threshold the valley may give (a valley below is raised to this)."""
    t1_max: float = 0.95
    """t1 'auto': the highest threshold the valley may give (a valley above is lowered to this)."""
    min_separation: float = 3.0
    """t1 'auto': the least Ashman's D of the two fitted modes that counts as a valley (2: just bimodal);
    below it, or with one mode, nothing merges (see no_valley)."""
    no_valley: str = "aware"
    """t1 'auto' without a valley: 'aware' (no merge, keep training dataset-aware) or 'agnostic' (no merge,
    switch to the dataset-agnostic softmax over the unmerged classes)."""
    mutual_nn: bool = False
    """Candidate pairs only between reciprocal nearest neighbours (each is the other's top-1 among the
    searched classes): cuts the look-alike chains a one-way kNN links into components."""

    t2_floor: float = 0.1
    """t2 'auto': the earliest fusion, a fraction of total steps."""
    t2_ceiling: float = 0.5
    """t2 'auto': the latest fusion, a fraction of total steps (fuses there, ready or not; >= 1: may never)."""
    readiness_every: int = 1000
    """t2 'auto': steps between readiness checks (each one a kNN of the proxies, nothing applied)."""
    alignment_plateau: float = 0.01
    """t2 'auto': the proxies' alignment (mean cosine of a sample to its class proxy, over the steps since
    the last check) has plateaued when it rose less than this since the previous check."""

    @property
    def t1_auto(self) -> bool:
        return self.t1 == "auto"

    @property
    def t2_auto(self) -> bool:
        return self.t2 == "auto"

    def __post_init__(self):
        _check(self.t1_auto or not isinstance(self.t1, str), "fusion.t1",
               f"must be a number or 'auto', got {self.t1!r}")
        _check(self.t1_auto or self.t1 > 0, "fusion.t1", f"must be > 0, got {self.t1}")
        _check(0 < self.t1_min < self.t1_max <= 1, "fusion.t1_min",
               f"must satisfy 0 < fusion.t1_min < fusion.t1_max <= 1, got {self.t1_min} and {self.t1_max}")
        _check(self.min_separation > 0, "fusion.min_separation", f"must be > 0, got {self.min_separation}")
        _check(self.no_valley in NO_VALLEY_CHOICES, "fusion.no_valley",
               f"must be {_either(NO_VALLEY_CHOICES)}, got {self.no_valley!r}")
        _check(self.t2_auto or not isinstance(self.t2, str), "fusion.t2",
               f"must be a number or 'auto', got {self.t2!r}")
        _check(self.t2_auto or self.t2 >= 0, "fusion.t2", f"must be >= 0, got {self.t2}")
        _check(0 <= self.t2_floor <= self.t2_ceiling, "fusion.t2_floor",
               f"must satisfy 0 <= fusion.t2_floor <= fusion.t2_ceiling, got {self.t2_floor} and {self.t2_ceiling}")
        _check(self.readiness_every >= 1, "fusion.readiness_every", f"must be >= 1, got {self.readiness_every}")
        _check(self.alignment_plateau >= 0, "fusion.alignment_plateau",
               f"must be >= 0, got {self.alignment_plateau}")
        _check(self.knn_k >= 1, "fusion.knn_k", f"must be >= 1, got {self.knn_k}")
        _check(self.max_component >= 2, "fusion.max_component", f"must be >= 2, got {self.max_component}")
        _check(self.same_dataset_policy in FUSION_POLICIES, "fusion.same_dataset_policy",
               f"must be {_either(FUSION_POLICIES)}, got {self.same_dataset_policy!r}")
        _check(self.backend in KNN_BACKENDS, "fusion.backend",
               f"must be {_either(KNN_BACKENDS)}, got {self.backend!r}")
        _check(self.knn_precision in KNN_PRECISIONS, "fusion.knn_precision",
               f"must be {_either(KNN_PRECISIONS)}, got {self.knn_precision!r}")


@dataclass
class OptimConfig:
    lr: float = 0.005
    """Base learning rate at the global batch size used in the paper (1024); not rescaled."""
    momentum: float = 0.9
    """SGD momentum of the backbone and the FC, in [0, 1)."""
    weight_decay: float = 5e-4
    """L2 weight decay (>= 0)."""
    total_steps: int = 480_000
    """Optimizer steps of the whole run (the fusion step and the lr milestones are in these steps)."""
    lr_milestones: list[int] = field(default_factory=lambda: [80_000, 140_000, 200_000])
    """Steps at which the lr is multiplied by `lr_decay`."""
    lr_decay: float = 0.1
    """Factor applied to the lr at each milestone, in (0, 1]."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many steps."""
    grad_clip: float = 5.0
    """Max global grad norm of the backbone and the dataset classifier together (the FC is not clipped: it
    steps in the head); 0 disables clipping. The classifier counts in the norm even while the GRL weight is 0."""

    def __post_init__(self):
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.total_steps > 0, "optim.total_steps", f"must be > 0, got {self.total_steps}")
        _check(0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0 < self.lr_decay <= 1, "optim.lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        _check(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip}")
        _check(all(0 < m for m in self.lr_milestones) and self.lr_milestones == sorted(self.lr_milestones),
               "optim.lr_milestones", f"must be increasing positive steps, got {self.lr_milestones}")
        late = [m for m in self.lr_milestones if m >= self.total_steps]
        _check(not late, "optim.lr_milestones", f"{late} at or past optim.total_steps={self.total_steps}: the lr "
               f"would never decay there; give milestones below {self.total_steps}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.warmup_steps < self.total_steps, "optim.warmup_steps",
               f"{self.warmup_steps} warm-up steps do not fit in optim.total_steps={self.total_steps} (the lr "
               f"would never reach optim.lr); set optim.warmup_steps below {self.total_steps}, e.g. "
               f"--set optim.warmup_steps={self.total_steps // 10}")


@dataclass
class CheckpointConfig:
    every: int = 2000
    """Save every this many steps (0: only at the end and at fusion)."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted."""
    resume: str = "auto"
    """'auto' (newest complete checkpoint in the run dir, if any), a checkpoint path, or '' (fresh start)."""

    def __post_init__(self):
        _check(self.every >= 0, "checkpoint.every", f"must be >= 0, got {self.every}")
        _check(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")


@dataclass
class LogConfig:
    every: int = 50
    """Log a step line every this many steps."""
    eval_every: int = 2000
    """Run verification every this many steps (0: only at the end)."""
    tensorboard: bool = True
    """Also write tensorboard scalars to output_dir/tensorboard (rank 0)."""

    def __post_init__(self):
        _check(self.every >= 1, "log.every", f"must be >= 1, got {self.every}")
        _check(self.eval_every >= 0, "log.eval_every", f"must be >= 0 (0: only at the end), got {self.eval_every}")


METHODS = ("facefusion", "naive", "naive0", "dail", "interclass")


@dataclass
class TrainConfig:
    output_dir: str = "runs/demo"
    """Run folder: checkpoints, logs, metrics.jsonl, tensorboard, fusion report."""
    seed: int = 0
    """Seed of the data order, augmentation, initialisation and class sampling (>= 0)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cuda' or 'cpu'."""
    stop_at_step: int = 0
    """Save a checkpoint and exit once this global step is reached (for time-limited jobs); 0: run to the end."""
    dtype: str = "auto"
    """Compute dtype of the backbone and of the head's cosine matmul: 'auto' (bf16 on CUDA, fp32 on CPU),
    'bf16' or 'fp32' (fp32 keeps the head's matmul in fp32 too). 'fp16' is refused: it needs loss scaling."""
    method: str = "facefusion"
    """How the datasets are combined (the paper's definitions, §4.5): 'facefusion' (dataset-aware until
    fusion.t2, merge at fusion.t1, then agnostic); 'naive' (the paper's naive concatenation = FaceFusion
    with T1 > 1: dataset-aware until t2, then agnostic over every source class, nothing merged);
    'naive0' (agnostic from step 0); 'dail' (dataset-aware throughout); 'interclass' (agnostic from
    step 0 with head.interclass_threshold > 0). The GRL is grl.weight / grl.start_step for every method."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    head: PartialFCConfig = field(default_factory=PartialFCConfig)
    grl: GRLConfig = field(default_factory=GRLConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        _check(self.device in ("auto", "cuda", "cpu"), "device", f"must be 'auto', 'cuda' or 'cpu', got {self.device!r}")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(self.stop_at_step >= 0, "stop_at_step", f"must be >= 0, got {self.stop_at_step}")
        _check(bool(self.output_dir), "output_dir", "must name a folder")
        _check(self.dtype in ("auto", "bf16", "fp16", "fp32"), "dtype",
               f"must be 'auto', 'bf16', 'fp16' or 'fp32', got {self.dtype!r}")
        _check(self.dtype != "fp16", "dtype",
               "'fp16' is not supported: it needs loss scaling (a GradScaler), which the Partial-FC head's own "
               "optimizer step does not do; use 'bf16' (same speed on Ampere and later, no scaling needed)")
        _check(self.method in METHODS, "method", f"unknown method {self.method!r}; available: {list(METHODS)}")
        _check(not (self.fusion.t2_auto and self.method == "naive"), "fusion.t2",
               "'auto' watches the proxies for a merge; method 'naive' never merges, give it a number")
        _check(self.method != "interclass" or self.head.interclass_threshold > 0, "head.interclass_threshold",
               "method 'interclass' needs a threshold in (0, 1]")

    @property
    def agnostic_from_start(self) -> bool:
        """The softmax is dataset-agnostic from step 0 (no dataset-aware phase, no fusion)."""
        return self.method in ("naive0", "interclass")

    @property
    def merges(self) -> bool:
        """The phase boundary merges proxies (False for 'naive': it only switches to agnostic)."""
        return self.method == "facefusion"

    @property
    def t2_step(self) -> int | None:
        """The step of the phase boundary (fusion, or naive's switch to agnostic), or None when there is
        none: T2 at or beyond the end, method 'dail', or a method agnostic from the start."""
        if self.method == "dail" or self.agnostic_from_start:
            return None
        t2 = self.fusion.t2_ceiling if self.fusion.t2_auto else self.fusion.t2
        step = round(t2 * self.optim.total_steps)
        return step if step < self.optim.total_steps else None

    @property
    def t2_floor_step(self) -> int | None:
        """fusion.t2 'auto': the earliest step of the phase boundary (`t2_step` is then the latest);
        a fixed t2: `t2_step`."""
        if self.t2_step is None or not self.fusion.t2_auto:
            return self.t2_step
        return min(round(self.fusion.t2_floor * self.optim.total_steps), self.t2_step)


# ---------------------------------------------------------------------------------------------
# Building from plain data


_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _coerce(value, annotation, key: str):
    """`value` checked against the field's annotation (ints widen to floats; nothing else converts)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        _check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return _build(annotation, value, key + ".")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        _check(isinstance(value, list), key, f"expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return _coerce_either(value, typing.get_args(annotation), key)
    if annotation is float:
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            value = float(value)  # PyYAML reads "1e-3" (no dot) as a string
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        _check(isinstance(value, float) or abs(value) < 2 ** 63, key, "expected a finite number, got an integer of "
               f"{len(str(abs(value)))} digits")
        _check(math.isfinite(value), key, f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        _check(abs(value) < 2 ** 63, key, f"expected an integer below 2^63, got one of {len(str(abs(value)))} digits")
        return value
    if annotation is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {annotation!r}")


def _coerce_either(value, annotations, key: str):
    """A union field (e.g. `float | str` for a number or 'auto'): the value as the first type it fits;
    the field's own check then says which strings it takes."""
    errors = []
    for annotation in annotations:
        try:
            return _coerce(value, annotation, key)
        except ConfigError as e:
            errors.append(e)
    raise errors[0]  # the first type's complaint (e.g. "expected a finite number") says the most


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}'; known keys: {', '.join(prefix + n for n in names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(f"{prefix}{e}") from None
        raise


def config_from_dict(values: dict) -> TrainConfig:
    return _build(TrainConfig, values)


def _yaml():
    """PyYAML, imported where a config is read or written: importing this module (for ConfigError and the
    dataclasses, e.g. from the model, data and fusion code) must not need it."""
    import yaml

    return yaml


def _unique_key_loader():
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last quietly)."""
    yaml = _yaml()

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise ConfigError(f"key {key!r} given twice (line {key_node.start_mark.line + 1}); give it once")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def parse_yaml(text, source: str):
    """YAML `text` with the safe loader, duplicate keys refused; a ConfigError names `source`."""
    yaml = _yaml()
    try:
        return yaml.load(text, Loader=_unique_key_loader())
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {one_line(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None


def apply_override(values: dict, override: str) -> None:
    """Apply one `a.b.c=value` override (the value parsed as YAML) to a nested dict."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    path, raw = override.split("=", 1)
    parts = path.strip().split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: '{part}' is not a section")
    node[parts[-1]] = parse_yaml(raw, f"--set {path.strip()}") if raw.strip() else ""


def load_config(path: str | None = None, overrides: typing.Sequence[str] = (), base: dict | None = None) -> TrainConfig:
    """Defaults, then `base` or the YAML file (if any), then each override in order."""
    values: dict = copy.deepcopy(base) if base else {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config ({e})") from None
        values = parse_yaml(text, path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for override in overrides:
        apply_override(values, override)
    try:
        return config_from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def config_to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: TrainConfig) -> str:
    return _yaml().safe_dump(config_to_dict(cfg), sort_keys=False)


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source: Python keeps none)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe_keys(cls=TrainConfig, prefix: str = "") -> list[tuple[str, object, str]]:
    """(dotted key, default, one-line doc) of every config key, in declaration order."""
    docs, defaults = _field_docs(cls), cls()
    rows = []
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_keys(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, value, docs.get(f.name, "")))
    return rows


def keys_help() -> str:
    """One line per config key: key, default, doc (for `fftrain train --help`)."""
    yaml = _yaml()
    rows = [(key, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip(), doc)
            for key, default, doc in describe_keys()]
    width = max(len(key) + len(default) for key, default, _ in rows) + 4
    return "\n".join(f"  {f'{key} = {default}':<{width}} {doc}".rstrip() for key, default, doc in rows)
