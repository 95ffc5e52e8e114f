"""fftrain: distributed face-recognition training on several datasets at once (FaceFusion)."""

__version__ = "0.1.0"
