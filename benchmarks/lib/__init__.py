"""What the benchmarks and experiments share (not part of the product):

- `worlds`: the feature-level worlds (calibrated, look-alike) and the Eq. 5 split;
- `feature_training`: a run of the product's training step and phase boundary on such a world, its arms and flags;
- `peer`: insightface arcface_torch's head, fetched at run time into a cache outside the repository, as an arm;
- `metrics`: TAR@FAR over all pairs and rank-1 identification;
- `planted`: planted pseudo-label worlds (Gaussian clusters with a known overlap);
- `stats`: paired differences across seeds with t-intervals, and two one-sided tests of equivalence;
- `report`: the machine line and the criteria writer of a table.md.

Experiments import these as `benchmarks.lib.<module>` (the repository root on sys.path).
"""
