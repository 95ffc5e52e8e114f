"""What the benchmarks and experiments share (not part of the product):

- `worlds`: the feature-level world and the Eq. 5 split;
- `feature_training`: a run of the product's training step on such a world, its flags and method configs;
- `metrics`: TAR@FAR over all pairs and rank-1 identification;
- `planted`: planted pseudo-label worlds (Gaussian clusters with a known overlap);
- `stats`: paired differences across seeds with t-intervals;
- `report`: the machine line and the criteria writer of a table.md.

Experiments import these as `benchmarks.lib.<module>` (the repository root on sys.path).
"""
