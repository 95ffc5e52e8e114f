"""Small training sets for the data-pipeline tests: JPEGs that carry their own id.

Every image has 12 horizontal bands (9 rows each, a horizontal flip leaves them in place); band
b is bright when bit b of the image's uid is set. `read_uid` recovers the uid from a decoded,
normalised image, so a test can tell which record each output image came from. Low-amplitude
noise on top makes the JPEG decode non-trivial for the pixel comparisons.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from recordio_tools.manifest import DatasetInfo, write_manifest
from recordio_tools.files import atomic_directory
from recordio_tools.shards import DatasetWriter

SIZE, BANDS, BAND_ROWS = 112, 12, 9


def identity_image(uid: int) -> np.ndarray:
    rng = np.random.default_rng(uid)
    image = rng.integers(-20, 21, (SIZE, SIZE, 3)) + 128
    for b in range(BANDS):
        image[b * BAND_ROWS:(b + 1) * BAND_ROWS] += 90 if (uid >> b) & 1 else -90
    image[:, :SIZE // 3, 0] += 15  # left-right asymmetric, so a flip changes the pixels
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def read_uid(image) -> int:
    """uid of an output image ([3, H, W] in [-1, 1], tensor or array)."""
    image = np.asarray(image)
    bits = [image[:, b * BAND_ROWS:(b + 1) * BAND_ROWS].mean() > 0 for b in range(BANDS)]
    return sum(1 << b for b, bit in enumerate(bits) if bit)


def reference(jpeg: bytes, mirror: bool = False) -> np.ndarray:
    """PIL decode normalised to [-1, 1], CHW: what the pipelines must produce."""
    image = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.float32)
    if mirror:
        image = image[:, ::-1]
    return (image / 127.5 - 1.0).transpose(2, 0, 1)


@dataclass
class TrainingSet:
    manifest: str
    source: dict[int, int] = field(default_factory=dict)   # uid -> source class
    dataset: dict[int, int] = field(default_factory=dict)  # uid -> dataset index
    jpeg: dict[int, bytes] = field(default_factory=dict)   # uid -> JPEG bytes
    folders: list[str] = field(default_factory=list)


def make_training_set(root: str, datasets=(("a", 4, 40, 2), ("b", 6, 50, 2), ("c", 3, 30, 1)),
                      corrupt: tuple[int, int] | None = None, classes_short_by: int = 0) -> TrainingSet:
    """Datasets (name, classes, images, shards) in `root`, a manifest in root/train.

    Image i of a dataset gets local label (i + 1) % classes, except that `classes_short_by` > 0
    makes the last dataset's manifest class count that much too small (its first image holds the
    largest label). `corrupt=(dataset, image)` truncates one JPEG.
    """
    result = TrainingSet(os.path.join(root, "train", "manifest.json"))
    infos, offset, uid = [], 0, 0
    for d, (name, classes, images, shards) in enumerate(datasets):
        folder = os.path.join(root, name)
        with atomic_directory(folder) as tmp:
            writer = DatasetWriter(tmp, name, shards, class_offset=offset)
            for i in range(images):
                label = (i + classes - 1) % classes
                jpeg = encode_jpeg(identity_image(uid))
                if corrupt == (d, i):
                    jpeg = jpeg[:400] + b"\x00" * 64 + jpeg[-600:]
                writer.add(label, jpeg)
                result.source[uid], result.dataset[uid], result.jpeg[uid] = offset + label, d, jpeg
                uid += 1
            info = writer.finish(classes)
        if classes_short_by and d == len(datasets) - 1:
            info = DatasetInfo(info.name, classes - classes_short_by, info.num_images, info.class_offset, info.shards)
        infos.append(info)
        result.folders.append(folder)
        offset += classes
    write_manifest(os.path.dirname(result.manifest), infos, result.folders)
    return result


def fixture_manifest(out_dir: str, rec: str, idx: str, name: str, num_classes: int, num_images: int) -> str:
    """A one-dataset manifest over an existing .rec and an index of its image records."""
    from recordio_tools.manifest import Shard

    info = DatasetInfo(name, num_classes, num_images, 0, [Shard(os.path.basename(rec), os.path.basename(idx),
                                                                num_images)])
    folder = os.path.dirname(os.path.abspath(rec))
    if os.path.dirname(os.path.abspath(idx)) != folder:
        raise ValueError("rec and idx must share a folder")
    write_manifest(out_dir, [info], [folder])
    return os.path.join(out_dir, "manifest.json")


def zero_jpeg_body(manifest_path: str, key: int, keep: int = 20) -> str:
    """Zero record `key`'s JPEG after its first `keep` bytes (SOI + APP0 intact), in place, length
    unchanged; returns the shard and key as `RecordSet.describe` names them."""
    from fftrain.data.records import RecordSet
    from recordio_tools.recordio import decode_part_header, parse_image_header
    from recordio_tools.manifest import load_manifest

    records = RecordSet(load_manifest(manifest_path))
    shard, local, _ = records.locate(key)
    with open(records.rec_paths[shard], "r+b") as f:
        f.seek(local)
        _, _, length = decode_part_header(f.read(8))
        payload = f.read(length)  # a whole record (cflag 0): what our writer makes of a JPEG
        image_start, _ = parse_image_header(payload)
        jpeg_length = len(payload) - image_start
        f.seek(local + 8 + image_start + keep)
        f.write(b"\x00" * (jpeg_length - keep))
    described = records.describe(key)
    records.close()
    return described


def copy_with_a_bad_record(clean_set, root, seed: int, position: int = 3) -> tuple[str, int, str]:
    """A copy of a training set in `root` whose record at `position` of epoch 0's order (seed `seed`) has its
    JPEG body zeroed: (manifest path, key, how the record is named)."""
    import shutil

    from fftrain.data.records import RecordSet
    from fftrain.data.sharding import epoch_order
    from recordio_tools.manifest import load_manifest

    shutil.copytree(clean_set, root)
    manifest = os.path.join(str(root), "manifest.json")
    key = int(epoch_order(len(RecordSet(load_manifest(manifest))), seed, 0)[position])
    return manifest, key, zero_jpeg_body(manifest, key)
