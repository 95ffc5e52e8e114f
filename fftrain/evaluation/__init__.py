"""Evaluation: verification on insightface .bin pair sets, DAO score calibration, ONNX export.

- `metrics`: insightface's 10-fold best-threshold accuracy and TAR at FAR (numpy only).
- `verification`: decode a .bin safely, embed with flip-sum, evaluate (one rank or all of them).
- `dao`: the DAO-calibrated pair score with the class proxies as anchors (faiss).
- `export`: backbone to ONNX with a dynamic batch axis, checked with onnxruntime.
- `merge_quality`: a run's fusion against the planted duplicates of a synthetic set (experiments).
The `fftrain eval` and `fftrain export` commands are in fftrain/commands/.

Nothing heavy is imported here; import the submodule you need.
"""
