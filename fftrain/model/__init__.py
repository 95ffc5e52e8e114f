"""The replicated network: backbones, the embedding model DDP wraps, the GRL dataset classifier.

- `backbones/`: iresnet18-200, mobilefacenet, the demo's iresnet_tiny; insightface's weights load.
- `embedding`: `EmbeddingModel` (backbone + dataset classifier, one DDP module).
- `grl`: gradient reversal and the dataset classifier it feeds.
"""

from fftrain.model.embedding import EmbeddingModel

__all__ = ["EmbeddingModel"]
