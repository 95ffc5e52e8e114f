"""The class proxies: the sharded Partial-FC head, its distributed softmax, and the margins.

- `partial_fc`: `PartialFCHead` (each rank holds a contiguous block of class rows and samples among
  them), `dist_softmax_cross_entropy` (the softmax over classes split across ranks).
- `margins`: ArcFace, CosFace and the combined margin, applied to the target logit.
"""

from fftrain.head.margins import build_margin
from fftrain.head.partial_fc import PartialFCHead, dist_softmax_cross_entropy

__all__ = ["PartialFCHead", "build_margin", "dist_softmax_cross_entropy"]
