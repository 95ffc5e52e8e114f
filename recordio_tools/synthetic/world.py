"""The synthetic face world: the six datasets' names and sizes (as the paper lists them), the seed
streams every random draw comes from, each dataset's style (what makes six domains), and a person's
latent vector with the meaning of each of its entries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIZE = 112  # output images are SIZE x SIZE RGB, the insightface aligned-crop size
FACE_UNIT = 30.0 / (SIZE / 2)  # one face unit (about half a face width) in image coordinates [-1, 1]

# (name, identities, images) of the six public datasets, as the paper lists them.
PAPER_DATASETS: tuple[tuple[str, int, int], ...] = (
    ("asian_celeb", 94_000, 2_800_000),
    ("casia_webface", 10_500, 500_000),
    ("celeba", 10_200, 200_000),
    ("deepglint", 180_900, 6_800_000),
    ("ms1m", 85_700, 5_800_000),
    ("vggface2", 8_600, 3_100_000),
)
DATASET_NAMES = tuple(name for name, _, _ in PAPER_DATASETS)

# Seed streams: np.random.default_rng([seed, STREAM, ...]).
_CLUSTERS, _PERSON, _IMAGES, _VERIFICATION, _ORDER, _PLAN, _NOISE_PLAN, _NOISE_IMAGES = range(8)


# ---------------------------------------------------------------------------------------------
# Styles: what makes the six datasets look like six domains.


@dataclass(frozen=True)
class Style:
    """How one dataset's images look, beyond the person and the per-image nuisance."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast, per-channel gain
    saturation: float = 1.0  # 1 = unchanged, 0 = grey
    gamma: float = 1.0  # applied to [0, 1] intensities
    contrast: float = 1.0  # around mid grey
    blur: float = 0.4  # Gaussian blur radius, pixels (plus up to 0.5 px per image)
    noise: float = 3.0  # Gaussian noise std, grey levels of 255 (plus up to 3 per image)
    downsample: int = 1  # resolution loss: averaged over downsample x downsample blocks, then upsampled
    jpeg_quality: int = 90
    pose: float = 1.0  # multiplier of the pose nuisance (roll, yaw, pitch, shift)
    light: float = 1.0  # multiplier of the lighting nuisance
    occlusion: float = 0.25  # probability of an occluder per image
    background: tuple[float, float, float] = (150.0, 150.0, 150.0)  # mean background colour


STYLES: dict[str, Style] = {
    "asian_celeb": Style(gain=(1.07, 1.0, 0.9), blur=0.6, noise=4.0, jpeg_quality=85,
                         background=(175, 150, 125)),
    "casia_webface": Style(gain=(0.96, 1.05, 0.95), downsample=2, blur=0.3, noise=5.0, jpeg_quality=75,
                           pose=1.2, background=(120, 130, 120)),
    "celeba": Style(saturation=1.3, gamma=0.85, contrast=1.1, blur=0.0, noise=2.0, jpeg_quality=92, light=0.7,
                    background=(190, 170, 190)),
    "deepglint": Style(gain=(0.9, 0.98, 1.1), blur=0.8, noise=6.0, jpeg_quality=80, pose=0.9,
                       background=(110, 120, 150)),
    "ms1m": Style(saturation=0.7, contrast=0.85, blur=0.5, noise=3.0, jpeg_quality=88, light=1.2,
                  background=(140, 140, 140)),
    "vggface2": Style(blur=0.4, noise=4.0, jpeg_quality=90, pose=1.5, light=1.3, occlusion=0.35,
                      background=(100, 90, 80)),
    "verification": Style(blur=0.4, noise=3.0, jpeg_quality=90, pose=1.1, occlusion=0.2),
}


# ---------------------------------------------------------------------------------------------
# Identities: a latent vector and what it means.

LATENT_DIM = 40
NUM_CLUSTERS = 8  # "look-alike families": persons of one cluster share part of their latent
CLUSTER_WEIGHT = 0.6  # latent = w * cluster centre + sqrt(1 - w^2) * own part (unit variance either way)
IDENTITY_SPREAD = 0.9  # default: multiplies every identity parameter's spread around the population mean
IMAGE_DRIFT = 0.25  # default: per-image std of the latent drift (hair, beard, make-up change between photos)


def cluster_centres(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, _CLUSTERS]).standard_normal((NUM_CLUSTERS, LATENT_DIM)).astype(np.float32)


def person_latent(seed: int, person: int, centres: np.ndarray | None = None) -> np.ndarray:
    """The latent vector of a person (LATENT_DIM standard-normal entries, correlated within a cluster)."""
    centres = cluster_centres(seed) if centres is None else centres
    rng = np.random.default_rng([seed, _PERSON, person])
    cluster = rng.integers(NUM_CLUSTERS)
    own = rng.standard_normal(LATENT_DIM).astype(np.float32)
    return (CLUSTER_WEIGHT * centres[cluster] + math.sqrt(1 - CLUSTER_WEIGHT ** 2) * own).astype(np.float32)


# latent index of each parameter (in order); parameters are mean + spread * latent.
_P = {name: i for i, name in enumerate([
    "head_w", "head_h", "head_y", "jaw", "square", "eye_x", "eye_y", "eye_w", "eye_h", "eye_tilt",
    "brow_d", "brow_w", "brow_t", "brow_tilt", "brow_curve", "nose_y", "nose_w", "mouth_y", "mouth_w", "lip_t",
    "smile", "skin_tone", "skin_hue", "hair_light", "hair_red", "hairline", "hair_vol", "hair_long", "hair_wave",
    "hair_part", "iris", "beard", "glasses", "cheek", "ear", "tex_a", "tex_b", "tex_c", "moles", "lip_red",
])}
assert len(_P) == LATENT_DIM


_FIXED = ("glasses", "iris", "moles", "tex_a", "tex_b", "tex_c")
