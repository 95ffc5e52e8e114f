"""Pseudo-labels for an unlabeled face collection (RoyChowdhury et al., ECCV 2020, on fftrain's pieces).

    from fftrain.pseudo_label import PseudoLabelOptions, pseudo_label
    result = pseudo_label(embeddings, proxies, PseudoLabelOptions(backend="infomap"))

Modules: `evt` (Otsu, Weibull MLE, two-Weibull EM), `separation` (max cosine to the class proxies,
overlapping vs disjoint identities), `clustering` (faiss kNN graph; infomap, leiden, connected
components), `uncertainty` (cluster margin, p-(x), weights), `pipeline` (the steps together),
`report` (JSON, PNGs), `metrics` (pairwise / BCubed / NMI), `collection` (the unlabeled input, the
pseudo-labeled dataset folder out). The command is fftrain/commands/pseudo_label.py; the planted
worlds of its benchmarks are in benchmarks/lib/planted.py. Heavy imports (faiss, infomap, igraph,
sklearn, matplotlib) happen inside the functions that use them.
"""

from fftrain.pseudo_label.pipeline import PseudoLabelError, PseudoLabelOptions, PseudoLabels, pseudo_label

__all__ = ["PseudoLabelError", "PseudoLabelOptions", "PseudoLabels", "pseudo_label"]
