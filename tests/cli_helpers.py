"""Small datasets and image trees for the recordio_tools command tests, and a way to run a command.

    code, out, err = run_cli(capsys, "inspect", str(folder))
    make_tree(tmp_path / "tree", {"alice": 3, "bob": 2})            # folder per identity of JPEGs
    info = make_dataset(tmp_path / "casia", "casia", [2, 3], class_offset=0)   # images per class
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib

import numpy as np
from PIL import Image

from recordio_tools import cli
from recordio_tools.manifest import DatasetInfo
from recordio_tools.recordio import RecordReader, class_id_of, unpack
from recordio_tools.files import atomic_directory
from recordio_tools.shards import DatasetWriter


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `recordio_tools ARGV...` run in this process."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jpeg_bytes(rng: np.random.Generator, size: tuple[int, int] = (16, 16), quality: int = 90) -> bytes:
    """A small JPEG of random pixels (distinct for every call)."""
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_tree(root: pathlib.Path, images_per_identity: dict[str, int], size: tuple[int, int] = (40, 48),
              seed: int = 0) -> dict[str, list[str]]:
    """A folder per identity holding JPEGs; returns the relative paths per identity."""
    rng = np.random.default_rng(seed)
    paths = {}
    for name, count in images_per_identity.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        paths[name] = []
        for i in range(count):
            (root / name / f"{i:03d}.jpg").write_bytes(jpeg_bytes(rng, size))
            paths[name].append(f"{name}/{i:03d}.jpg")
    return paths


def make_dataset(folder: pathlib.Path, name: str, images_per_class: list[int], class_offset: int = 0,
                 num_shards: int = 1, num_classes: int | None = None, seed: int = 0) -> DatasetInfo:
    """A dataset folder written with DatasetWriter: random 16x16 JPEGs, `images_per_class[c]` of class c."""
    rng = np.random.default_rng(seed)
    with atomic_directory(str(folder)) as tmp:
        writer = DatasetWriter(tmp, name, num_shards, class_offset)
        for local, count in enumerate(images_per_class):
            for _ in range(count):
                writer.add(local, jpeg_bytes(rng))
        info = writer.finish(num_classes)
    return info


def read_shard(rec: str | os.PathLike) -> list[tuple[int, int, bytes]]:
    """(key, class id, image bytes) of every record of a shard, in index order."""
    rows = []
    with RecordReader(rec) as reader:
        for key, payload in reader.items():
            header, image = unpack(payload)
            rows.append((key, class_id_of(header), image))
    return rows


def read_dataset(folder: pathlib.Path) -> list[tuple[int, bytes]]:
    """(class id, image bytes) of every record of every shard of a dataset folder."""
    return [(label, image) for rec in sorted(folder.glob("shard-*.rec")) for _, label, image in read_shard(rec)]


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def folder_snapshot(folder: pathlib.Path, with_mark: bool = True) -> dict[str, str]:
    """Relative path -> SHA-1 of every file below `folder` (to show it did not change). Without
    `with_mark`, the output mark (which holds the folder's identity, so differs between two folders of
    the same bytes) is left out."""
    from recordio_tools.files import OUTPUT_MARKER

    return {str(p.relative_to(folder)): sha1(p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file() and (with_mark or p.name != OUTPUT_MARKER)}


def leftover_temporaries(parent: pathlib.Path) -> list[str]:
    """Hidden temporary folders/files (`.NAME.tmp-PID`) left in `parent`."""
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]
