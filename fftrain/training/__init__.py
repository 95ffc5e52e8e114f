"""One run's engine: the trainer and what it owns.

- `trainer`: the loop (phases, the fusion call at T2, logging, verification, checkpoints).
- `checkpoint/`: DCP checkpoints (complete or absent, resharded on load, loaded safely), a package by concern.
- `resume_rules`: what a resumed run may change; `output_lock`: one run per output folder.
- `lr_schedule`, `run_log` (rank-0 log line, metrics.jsonl, tensorboard), `faults` (planted kills
  for the restart tests).

The embedded CPU demo config is `fftrain/demo.py`; the per-GPU memory plan is `fftrain/capacity.py`.

Import the submodule you need; nothing is imported here.
"""
