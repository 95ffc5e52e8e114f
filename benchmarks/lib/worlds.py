"""The feature-level world of the experiments: identities as latent vectors in look-alike families, images as
noisy nonlinear renderings of them (`make_world`), and the paper's Eq. 5 split of its identities into k overlapping
subsets (`make_split`). See benchmarks/experiment_replication.py for the world's description."""

from __future__ import annotations

import math

import numpy as np

WORLDS = {
    # The earlier stress world: look-alike families (4 identities with latent cosine 0.5) in a 32-d identity space,
    # 64-d embeddings, 10 images per identity. Its top-1 non-duplicate proxies sit near 0.6 and duplicates near 0.8
    # at T2: the two modes touch.
    "lookalike": dict(latent=32, family_size=4, family_sim=0.5, dim=64, images_per_id=10),
    # Real data's geometry, set before any method ran: a 512-d embedding (the paper's; the top-1 cosine of
    # ~1000 random unit vectors in 512-d is ~0.15, against ~0.40 in 64-d), a 128-d identity space without
    # look-alike families, and 40 images per identity (20 per source class of a duplicated identity): CASIA-WebFace
    # has 46.8 images per identity (494,414 / 10,575), MS1M-ArcFace 68 (5.8M / 85.7K). Target at T2: the paper's
    # Figure 3, duplicates near 1.0 and top-1 non-duplicates near 0.35 (benchmarks/RESULTS.md, 'Fusion readiness').
    "calibrated": dict(latent=128, family_size=1, family_sim=0.0, dim=512, images_per_id=20),
}
"""The experiments' worlds: flags a run does not set come from its world."""


def make_world(seed: int, *, ids: int, images_per_id: int, heldout_ids: int, heldout_images: int, latent: int,
               nuisance: int, input_dim: int, family_size: int, family_sim: float, sigma: float, pixel_noise: float,
               nuisance_scale: float, render_gain: float) -> dict:
    """Training renderings [ids * images_per_id, input_dim] with identity labels, and held-out ones."""
    rng = np.random.default_rng([seed, 0xFACE])

    def unit(n, d):
        v = rng.standard_normal((n, d))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def identities(n):
        families = unit(-(-n // family_size), latent)
        own = unit(n, latent)
        z = math.sqrt(family_sim) * families[np.arange(n) // family_size] + math.sqrt(1 - family_sim) * own
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    hidden = 4 * input_dim
    a1 = rng.standard_normal((latent + nuisance, hidden)) * render_gain / math.sqrt(1 + nuisance_scale ** 2)
    a2 = rng.standard_normal((hidden, input_dim)) / math.sqrt(hidden)

    def render(z, per_id):
        n = len(z)
        v = np.repeat(z, per_id, axis=0) + sigma * rng.standard_normal((n * per_id, latent)) / math.sqrt(latent)
        u = nuisance_scale * rng.standard_normal((n * per_id, nuisance)) / math.sqrt(nuisance)
        x = np.tanh(np.concatenate([v, u], 1) @ a1) @ a2 + pixel_noise * rng.standard_normal((n * per_id, input_dim))
        return x.astype(np.float32), np.repeat(np.arange(n), per_id)

    z = identities(ids)
    x, y = render(z, images_per_id)
    xh, yh = render(identities(heldout_ids), heldout_images)
    # z, identities and render (which continue the world's generator) let another experiment draw more images of
    # the same identities, or new identities, in the same world; nothing here uses them
    return {"x": x, "y": y, "x_heldout": xh, "y_heldout": yh, "ids": ids, "z": z, "identities": identities,
            "render": render}



def make_split(world: dict, k: int, ratio: float, seed: int, share_images: bool) -> dict:
    """Eq. 5 over the world's identities: source-class label of every training image (an image of a shared identity
    dealt to one of its two subsets, or -- share_images -- present in both), class -> subset table, true groups."""
    from recordio_tools.overlap_split import planted_counts, split_layout

    layout = split_layout(world["ids"], k, ratio)
    rng = np.random.default_rng([seed, 0x5B117, int(round(ratio * 1000))])
    order = rng.permutation(world["ids"])  # position -> identity
    offsets = np.concatenate([[0], np.cumsum(layout.subset_sizes)])
    holders: dict[int, list[int]] = {}  # identity -> its source classes
    for i in range(k):
        for local, pos in enumerate(layout.members(i)):
            holders.setdefault(int(order[pos]), []).append(int(offsets[i] + local))
    class_dataset = np.repeat(np.arange(k), layout.subset_sizes)
    images, labels = [], []
    seen = np.zeros(world["ids"], np.int64)
    start = rng.integers(0, 2, world["ids"])
    for index, person in enumerate(world["y"]):
        classes = holders[int(person)]
        if len(classes) > 1 and not share_images:
            classes = [classes[(start[person] + seen[person]) % len(classes)]]
        seen[person] += 1
        for c in classes:
            images.append(index)
            labels.append(c)
    return {"image": np.asarray(images), "label": np.asarray(labels), "class_dataset": class_dataset,
            "truth": [g for g in holders.values() if len(g) > 1], "counts": planted_counts(world["ids"], k, ratio),
            "num_classes": int(offsets[-1])}



def world_kwargs(args) -> dict:
    return dict(ids=args.ids, images_per_id=args.images_per_id, heldout_ids=args.heldout_ids,
                heldout_images=args.heldout_images, latent=args.latent, nuisance=args.nuisance,
                input_dim=args.input_dim, family_size=args.family_size, family_sim=args.family_sim,
                sigma=args.sigma, pixel_noise=args.pixel_noise, nuisance_scale=args.nuisance_scale,
                render_gain=args.render_gain)
