"""A small IJB-B/C set in insightface's layout (DIR/loose_crop, DIR/meta), generated with landmarks.

Each identity is a 112x112 pattern of coloured blocks; each image places it in a larger canvas under a
random similarity (scale, rotation, shift), and its 5 landmarks are the ArcFace template points moved by
that similarity, so aligning with them gives the pattern back."""

import os

import numpy as np
from PIL import Image

from recordio_tools.align import ARCFACE_TEMPLATE, _pil_inverse_affine

CANVAS = (150, 140)


def _pattern(rng) -> Image.Image:
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((112, 112), Image.NEAREST)


def _placed(face: Image.Image, rng) -> tuple[Image.Image, np.ndarray]:
    angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.9, 1.2)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = rng.uniform(10, 25, size=2)
    forward = np.hstack([rotation, shift[:, None]])  # face pixels -> canvas pixels
    canvas = face.transform(CANVAS, Image.AFFINE, _pil_inverse_affine(forward), resample=Image.BILINEAR)
    return canvas, ARCFACE_TEMPLATE @ rotation.T + shift


def write_ijb_set(root, target: str = "IJBC", *, identities: int = 4, templates_per_identity: int = 3,
                  seed: int = 0) -> dict:
    """Write the set; returns {"images": [...], "templates", "medias", "faceness", "pairs", "labels"}."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "loose_crop"), exist_ok=True)
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    names, templates, medias, faceness, points, owner = [], [], [], [], [], {}
    media_id = 1000
    for identity in range(identities):
        face = _pattern(rng)
        for t in range(templates_per_identity):
            template = 7 + 13 * (identity * templates_per_identity + t)  # sparse, unordered ids
            owner[template] = identity
            for _ in range(int(rng.integers(1, 4))):
                media_id += int(rng.integers(1, 5))
                for _ in range(int(rng.integers(1, 3))):
                    name = f"{len(names) + 1}.jpg"
                    canvas, landmarks = _placed(face, rng)
                    canvas.save(os.path.join(root, "loose_crop", name), quality=95)
                    names.append(name)
                    templates.append(template)
                    medias.append(media_id)
                    faceness.append(round(float(rng.uniform(0.5, 1.0)), 4))
                    points.append(np.round(landmarks.reshape(-1), 4))  # as written
    ids = sorted(owner)
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    labels = [int(owner[a] == owner[b]) for a, b in pairs]
    prefix = os.path.join(root, "meta", target.lower())
    with open(f"{prefix}_name_5pts_score.txt", "w") as f:
        for name, p, s in zip(names, points, faceness):
            f.write(" ".join([name, *(f"{v:.4f}" for v in p), str(s)]) + "\n")
    with open(f"{prefix}_face_tid_mid.txt", "w") as f:
        f.writelines(f"{n} {t} {m}\n" for n, t, m in zip(names, templates, medias))
    with open(f"{prefix}_template_pair_label.txt", "w") as f:
        f.writelines(f"{a} {b} {label}\n" for (a, b), label in zip(pairs, labels))
    return {"images": names, "templates": templates, "medias": medias, "faceness": faceness, "pairs": pairs,
            "labels": labels, "landmarks": np.asarray(points).reshape(-1, 5, 2)}
