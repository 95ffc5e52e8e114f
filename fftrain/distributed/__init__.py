"""Distributed plumbing: the only package that calls torch.distributed (with the checkpoint module).

- `context`: the process topology (`init_distributed` -> `DistContext`), the per-round store that
  makes torchrun restarts safe, the one reader of RANK / LOCAL_RANK / WORLD_SIZE.
- `comm`: collectives that are no-ops without a group, and the rule for where their tensors sit.
- `collectives`: all-gather with a reduce-scatter backward (autograd through the gathered batch).
- `class_sharding`: which rank holds which class rows (pure arithmetic).
"""

from fftrain.distributed.comm import (CommDeviceError, ProcessGroup, ReduceOp, all_gather_list, all_gather_object,
                                     all_reduce_, all_to_all_single_, barrier, broadcast_, broadcast_async_,
                                     broadcast_object, check_comm_tensor, clear_placement_rules, comm_device,
                                     declare_placement_rule, gather_object, is_nccl, rank_of, world_size_of)
from fftrain.distributed.context import (STARTUP_TIMEOUT_ENV, DistContext, StartupTimeout, destroy_distributed,
                                        elastic_run_id, init_distributed, launch_rank, pick_device, round_store,
                                        single_process_context, startup_timeout_s)

__all__ = ["CommDeviceError", "DistContext", "ProcessGroup", "ReduceOp", "STARTUP_TIMEOUT_ENV", "StartupTimeout",
           "all_gather_list", "all_gather_object", "all_reduce_", "all_to_all_single_", "barrier", "broadcast_",
           "broadcast_async_", "broadcast_object", "check_comm_tensor", "clear_placement_rules", "comm_device",
           "declare_placement_rule", "destroy_distributed", "elastic_run_id", "gather_object", "init_distributed",
           "is_nccl", "launch_rank", "pick_device", "rank_of", "round_store", "single_process_context",
           "startup_timeout_s", "world_size_of"]
