"""The paper's controlled experiment: one dataset split into k subsets whose neighbours share identities.

Identities are shuffled (seeded), then subset i takes the window [i * step, i * step + size) of the
shuffled order, so subsets i and i+1 share exactly `shared = size - step` identities, and the ratio
shared / size is the requested r up to rounding. `size` is the largest window for which the k
windows fit in the N identities:

    size + (k - 1) * (size - round(r * size)) <= N,   i.e. size ~= N / (k - (k - 1) r)

(the identities past the last window, fewer than k, are left out). For r <= 0.5 an identity is in
at most two subsets; above that, in up to ceil(1 / (1 - r)).

Images: with `share_images` every image of a shared identity is copied into each subset holding
it (the same photos under two labels); without, the identity's images are dealt round-robin
between those subsets (starting at a seeded subset), so no image is in two subsets. An identity
with fewer images than subsets holding it cannot be dealt; that is an error (use share_images).

Output: one dataset folder per subset, `<name>_s<i>`, class offsets the running sum; overlaps.json
(the same ground truth as `synth`); split.json with the layout and, for every subset class, the
original local label; and, unless disabled, manifest.json + train.idx over the subsets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .manifest import read_dataset_info, write_manifest
from .overlaps import OVERLAPS_FILE, make_groups, write_overlaps
from .recordio import RecordIOError, RecordReader, class_id_of, unpack
from .shards import DatasetWriter, atomic_directory

SPLIT_FILE = "split.json"


class SplitError(UserError, ValueError):
    """Arguments that cannot give the requested split of this dataset."""


@dataclass(frozen=True)
class SplitLayout:
    num_ids: int  # identities in the source dataset
    k: int  # subsets
    ratio: float  # requested overlap ratio r
    size: int  # identities per subset
    step: int  # offset between consecutive windows
    windows: tuple[tuple[int, int], ...]  # [start, end) of each subset in the shuffled identity order

    @property
    def shared(self) -> int:
        """Identities shared by consecutive subsets."""
        return self.size - self.step

    @property
    def used(self) -> int:
        return self.windows[-1][1]


def split_layout(num_ids: int, k: int, ratio: float) -> SplitLayout:
    """Subset size and step for k windows over num_ids identities with neighbours sharing round(r * size)."""
    if k < 2:
        raise SplitError(f"k={k}: need at least 2 subsets")
    if not 0.0 <= ratio < 1.0:
        raise SplitError(f"r={ratio}: the overlap ratio must be in [0, 1)")

    def span(size: int) -> int:
        return size + (k - 1) * (size - int(round(ratio * size)))

    size = min(num_ids, int(num_ids / (k - (k - 1) * ratio)) + 2)
    while size > 0 and (span(size) > num_ids or size - int(round(ratio * size)) < 1):
        size -= 1
    if size < 1:
        raise SplitError(f"{num_ids} identities cannot make {k} subsets with overlap ratio {ratio}")
    step = size - int(round(ratio * size))
    return SplitLayout(num_ids, k, ratio, size, step, tuple((i * step, i * step + size) for i in range(k)))


def split_dataset(src: str, out_dir: str, k: int, ratio: float, share_images: bool = False, seed: int = 0,
                  shards: int = 1, name: str | None = None, manifest: bool = True, progress: bool = True) -> dict:
    """Split the dataset folder `src` into `out_dir` (all or nothing); returns the summary written to split.json."""
    from tqdm import tqdm

    info = read_dataset_info(src)
    layout = split_layout(info.num_classes, k, ratio)
    rng = np.random.default_rng([seed, 0x5B117])
    order = rng.permutation(info.num_classes)  # shuffled position -> original local label
    # subset members: original local labels of each window, in a shuffled local order
    members = [rng.permutation(order[a:b]) for a, b in layout.windows]
    holders: dict[int, list[tuple[int, int]]] = {}  # original label -> [(subset, local label in subset)]
    for s, labels in enumerate(members):
        for local, label in enumerate(labels):
            holders.setdefault(int(label), []).append((s, local))
    deal_start = rng.integers(0, k, info.num_classes)  # which holder gets an identity's first image
    seen = np.zeros(info.num_classes, np.int64)
    got = {}  # (subset, local) -> images written
    base = name or info.name
    names = [f"{base}_s{i}" for i in range(k)]
    offsets = np.concatenate([[0], np.cumsum([layout.size] * k)])[:-1].tolist()

    with atomic_directory(out_dir, "split-overlap") as tmp, \
            tqdm(total=info.num_images, unit="img", desc="split-overlap", disable=not progress, leave=False) as bar:
        folders = [os.path.join(tmp, n) for n in names]
        writers = []
        for folder, n, offset in zip(folders, names, offsets):
            os.makedirs(folder)
            writers.append(DatasetWriter(folder, n, shards, offset))
        try:
            for shard in info.shards:
                rec, idx = os.path.join(src, shard.rec), os.path.join(src, shard.idx)
                with RecordReader(rec, idx, require_index=True) as reader:
                    for key, payload in reader.items():
                        header, jpeg = unpack(payload)
                        try:
                            label = class_id_of(header) - info.class_offset
                        except ValueError as e:
                            raise RecordIOError(rec, f"key {key}", str(e)) from None
                        if not 0 <= label < info.num_classes:
                            raise RecordIOError(rec, f"key {key}", f"class {label + info.class_offset} outside "
                                                f"[{info.class_offset}, {info.class_offset + info.num_classes}) "
                                                f"of dataset {info.name!r}")
                        targets = holders.get(label, [])
                        if targets and not share_images:
                            targets = [targets[(deal_start[label] + seen[label]) % len(targets)]]
                        seen[label] += 1
                        for s, local in targets:
                            writers[s].add(local, jpeg)
                            got[s, local] = got.get((s, local), 0) + 1
                        bar.update()
            empty = [(names[s], local, label) for label, hs in holders.items() for s, local in hs
                     if (s, local) not in got]
            if empty:
                n, local, label = empty[0]
                raise SplitError(f"{src}: {len(empty)} subset class(es) got no image, e.g. identity {label} as {n} "
                                 f"label {local} (it has {seen[label]} image(s) for {len(holders[label])} subsets); "
                                 "use --share-images or a dataset with at least 2 images per identity")
        except BaseException:
            for w in writers:
                w.abort()
            raise
        infos = [w.finish(layout.size) for w in writers]
        table = [(i.name, i.class_offset, i.num_classes) for i in infos]
        groups = make_groups(table, [hs for hs in holders.values() if len(hs) > 1])
        write_overlaps(os.path.join(tmp, OVERLAPS_FILE), table, groups, source="recordio_tools split-overlap",
                       input=os.path.abspath(src), ratio=ratio, share_images=share_images)
        if manifest:
            write_manifest(tmp, infos, folders)
        shared_sets = [set(map(int, members[i])) & set(map(int, members[i + 1])) for i in range(k - 1)]
        summary = {
            "format": "fftrain-split", "version": 1, "input": os.path.abspath(src), "input_name": info.name,
            "k": k, "ratio": ratio, "share_images": share_images, "seed": seed,
            "identities_in": info.num_classes, "identities_used": layout.used,
            "subset_size": layout.size, "shared_consecutive": layout.shared,
            "achieved_ratio": layout.shared / layout.size,
            "images_in": int(seen.sum()), "images_out": sum(i.num_images for i in infos),
            "subsets": [{"name": i.name, "class_offset": i.class_offset, "num_classes": i.num_classes,
                         "num_images": i.num_images,
                         "shared_with_next": len(shared_sets[s]) if s < k - 1 else 0} for s, i in enumerate(infos)],
            # origin[s][local] = the identity's local label in the input dataset
            "origin": [[int(x) for x in m] for m in members],
            "manifest": "manifest.json" if manifest else None, "overlaps": OVERLAPS_FILE,
        }
        with open(os.path.join(tmp, SPLIT_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    return summary
