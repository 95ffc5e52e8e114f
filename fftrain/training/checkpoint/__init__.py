"""Checkpoints: a directory that is complete or absent, resharded on load by torch.distributed.checkpoint,
loaded without running code from its files.

- `layout`: the folder's files and names, meta.json, state.json (the non-tensor leaves).
- `safe_read`: the restricted unpickler for DCP's `.metadata`, plain-tensor loads, the completeness check.
- `dcp_io`: the collective save and load (DCP, tensors only).
- `resume`: which checkpoint a run resumes from.
- `offline`: pieces of a checkpoint in one process (eval, export, fuse, audit, pseudo-label).
- `checks`: what the files may claim (meta fields, sizes against DCP's metadata, state.json kinds) and the
  unpickler that builds only declared fields of its own types.
"""

from fftrain.training.checkpoint.dcp_io import (load_checkpoint, model_and_optimizer_state, save_checkpoint,
                                                set_model_and_optimizer_state)
from fftrain.training.checkpoint.layout import (DCP_METADATA_FILE, FC_MOMENTUM, FC_WEIGHT, FORMAT_VERSION, LABEL_MAP,
                                                META_FILE, MODEL, OPTIMIZER, STATE_FILE, CheckpointError, ShardedRows,
                                                check_compatible, checkpoint_name, complete_checkpoints,
                                                latest_checkpoint, read_meta, split_tensors)
from fftrain.training.checkpoint.offline import (ProxiesAndLabels, load_backbone_from_checkpoint, load_partial,
                                                 load_proxies_and_labels, load_proxies_from_checkpoint)
from fftrain.training.checkpoint.resume import resolve_resume
from fftrain.training.checkpoint.safe_read import check_complete, load_weights_file, read_dcp_metadata

__all__ = ["DCP_METADATA_FILE", "FC_MOMENTUM", "FC_WEIGHT", "FORMAT_VERSION", "LABEL_MAP", "META_FILE", "MODEL",
           "OPTIMIZER", "STATE_FILE", "CheckpointError", "ProxiesAndLabels", "ShardedRows", "check_compatible",
           "check_complete", "checkpoint_name", "complete_checkpoints", "latest_checkpoint", "load_backbone_from_checkpoint",
           "load_checkpoint", "load_partial", "load_proxies_and_labels", "load_proxies_from_checkpoint",
           "load_weights_file", "model_and_optimizer_state", "read_dcp_metadata", "read_meta", "resolve_resume",
           "save_checkpoint", "set_model_and_optimizer_state", "split_tensors"]
