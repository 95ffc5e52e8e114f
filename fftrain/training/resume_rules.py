"""What a resumed run may change from the run that wrote its checkpoint.

A resume continues one run: it may change how the run is scheduled, logged and executed, but not
what the checkpoint's weights mean. Each config key has one rule (the longest listed prefix
decides):

- free: the lr schedule and optimizer settings, total_steps (not below the checkpoint's step),
  fusion settings (they act at the fusion step; a fused checkpoint never fuses again), the GRL
  weight and start, class sampling, logging, checkpointing, device, dtype, reader backend,
  workers, verification sets, where the data lies (the datasets are checked against the
  checkpoint's class counts and record count);
- batch: `data.batch_size` (and the number of ranks, which also changes the global batch): the
  data position is recomputed in images read of the epoch, so the run reads exactly the images
  the old run had not read yet; refused when the new global batch does not divide that count,
  or with `data.order=reader` (DALI's reader keeps its position per rank);
- never: the model's shape and definition, the seed (data order, sampling, augmentation), the
  margin and scale, the data order and augmentation, the synthetic preset.
"""

from __future__ import annotations

from fftrain.config import ConfigError

FREE, BATCH, NEVER = "free", "batch", "never"

RULES: dict[str, str] = {
    "output_dir": FREE, "device": FREE, "dtype": FREE, "stop_at_step": FREE,
    "seed": NEVER,
    "model": NEVER, "model.channels_last": FREE, "model.grad_checkpoint": FREE, "model.compile": FREE,
    "model.pretrained": FREE,
    "data": NEVER, "data.manifest": FREE, "data.synth_dir": FREE, "data.reader": FREE, "data.num_workers": FREE,
    "data.verification": FREE, "data.bad_records": FREE, "data.batch_size": BATCH,
    "head": NEVER, "head.sample_rate": FREE,
    "grl": FREE, "grl.hidden": NEVER,
    "fusion": FREE,
    "optim": FREE,
    "checkpoint": FREE,
    "log": FREE,
}

_WHY = {
    "seed": "the seed fixes the data order, class sampling and augmentation the checkpoint continues",
    "model": "the checkpoint's weights belong to that model",
    "head": "the proxies were trained with that margin and scale",
    "grl": "the dataset classifier's weights have that shape",
    "data": "the checkpoint continues that data stream",
}


def rule_of(key: str) -> str:
    """The rule of a dotted config key; a key no rule names is refused."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        rule = RULES.get(".".join(parts[:n]))
        if rule is not None:
            return rule
    return NEVER


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def changed_keys(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted key -> (old, new) for every key recorded in both configs whose value differs."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    return {k: (old_flat[k], new_flat[k]) for k in new_flat if k in old_flat and old_flat[k] != new_flat[k]}


def check_resume(meta: dict, new_config: dict, checkpoint: str, num_records: int) -> dict[str, tuple]:
    """Raise ConfigError naming every refused change (key, both values); return the allowed ones.
    `meta` is the checkpoint's meta.json (its step and its config)."""
    changes = changed_keys(meta.get("config", {}), new_config)
    refused = [f"{key}: the checkpoint has {old!r}, this run {new!r} ({_why(key)})"
               for key, (old, new) in changes.items() if rule_of(key) == NEVER]
    step = meta["step"]
    total = new_config["optim"]["total_steps"]
    if total < step:
        refused.append(f"optim.total_steps: {total} is below the checkpoint's step {step}; nothing would be "
                       f"trained (give optim.total_steps >= {step})")
    stop = new_config["stop_at_step"]
    if 0 < stop < step:  # equal: a requeued time-limited job that already got there, nothing to refuse
        refused.append(f"stop_at_step: {stop} is before the checkpoint's step {step}; nothing would be trained")
    recorded = meta.get("num_records")
    if recorded is not None and recorded != num_records:
        refused.append(f"data.manifest: the checkpoint was trained on {recorded} records, this training set has "
                       f"{num_records}")
    if refused:
        raise ConfigError(f"cannot resume from {checkpoint}: " + "; ".join(refused)
                          + "; keep those settings, or train with them in a new output_dir (or --resume '')")
    return {k: v for k, v in changes.items() if rule_of(k) != NEVER}


def _why(key: str) -> str:
    return _WHY.get(key.split(".")[0], "a resume continues the same run")


def data_position(meta: dict, num_records: int, global_batch: int, order: str) -> tuple[int, int]:
    """(epoch, step in the epoch) at which a run resumed from `meta` with `global_batch` images per
    step continues, so that it reads exactly the images the old run had not read in that epoch."""
    old_global = meta["config"]["data"]["batch_size"] * meta["world_size"]
    epoch, old_step = divmod(meta["step"], max(num_records // old_global, 1))
    if old_global == global_batch:
        return epoch, old_step
    read = old_step * old_global
    if order == "reader":
        raise ConfigError(f"data.batch_size: the checkpoint was trained with a global batch of {old_global} "
                          f"({meta['config']['data']['batch_size']} x {meta['world_size']} ranks), this run has "
                          f"{global_batch}; with data.order=reader DALI keeps its position per rank, so resume with "
                          "the same batch size and number of ranks")
    if read % global_batch:
        raise ConfigError(f"data.batch_size: the checkpoint stopped after {read} images of epoch {epoch} (global batch "
                          f"{old_global} = {meta['config']['data']['batch_size']} x {meta['world_size']} ranks); this "
                          f"run's global batch {global_batch} does not divide {read}, so it cannot continue the "
                          "epoch exactly; resume with a global batch that divides it, or the old one")
    return epoch, read // global_batch
