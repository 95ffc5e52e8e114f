"""The paper's controlled experiment (FaceFusion Eq. 5): one dataset split into k subsets in a cycle,
subset i sharing a block of identities with subset i+1 (mod k).

Identities are shuffled (seeded) and dealt into k contiguous "own" ranges O_0..O_{k-1} of sizes
floor(N/k) or ceil(N/k). With b = floor(N * r / k), the block B_i is the first b identities of
O_{(i+1) mod k}, and subset i holds O_i + B_i. So consecutive subsets (cyclically, s_{k-1} with s_0)
share b identities, the shared identities number k * b (= N * r up to the floor, Eq. 5's sum), no
identity is in more than two subsets, and the planted counts are (`planted_counts`):

    classes over all subsets (naive concatenation) = N + k * b      CASIA k=8 r=0.2/0.4/0.6: 12684/14796/16908
    classes of the largest subset (DAIL's softmax)  = ceil(N/k) + b  CASIA: 1586/1850/2114 (paper Table 4)
    conflicting identities                          = k * b          MS1M k=2 r=0.1: 8574 (paper Table 5)
    classes after an ideal fusion                   = N

r is a fraction of N (the paper's |shared| = N * r), in [0, 1]. For k = 2 the two blocks lie one in
each subset's own range, so s_0 and s_1 share 2b identities.

Images: with `share_images` every image of a shared identity is copied into both subsets holding
it (the paper's S'_ms1m, Table 5); without, the identity's images are dealt round-robin between
the two (starting at a seeded one), so no image is in two subsets (Eq. 5). An identity with one
image cannot be dealt; that is an error (use share_images).

Output: one dataset folder per subset, `<name>_s<i>`, class offsets the running sum; overlaps.json
(the same ground truth as `synth`); split.json with the layout, the planted counts and, for every
subset class, the original local label; and, unless disabled, manifest.json + train.idx.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .files import atomic_directory
from .manifest import read_dataset_info, write_manifest
from .overlaps import OVERLAPS_FILE, make_groups, write_overlaps
from .recordio import RecordIOError, RecordReader, class_id_of, unpack
from .shards import DatasetWriter

SPLIT_FILE = "split.json"


class SplitError(UserError, ValueError):
    """Arguments that cannot give the requested split of this dataset."""


@dataclass(frozen=True)
class SplitLayout:
    """Eq. 5 over positions 0..N-1 of the shuffled identity order."""

    num_ids: int  # N: identities in the source dataset
    k: int  # subsets
    ratio: float  # r: shared identities as a fraction of N
    block: int  # b = floor(N * r / k): identities subset i shares with subset i+1 (mod k)
    owned: tuple[tuple[int, int], ...]  # [start, end) of each subset's own range

    def members(self, i: int) -> list[int]:
        """Positions held by subset i: its own range, then the first b of the next subset's range."""
        a, e = self.owned[i]
        na = self.owned[(i + 1) % self.k][0]
        return list(range(a, e)) + list(range(na, na + self.block))

    @property
    def subset_sizes(self) -> list[int]:
        return [e - a + self.block for a, e in self.owned]


def split_layout(num_ids: int, k: int, ratio: float) -> SplitLayout:
    """The cyclic Eq. 5 layout for N = num_ids identities, k subsets and overlap ratio r."""
    if k < 2:
        raise SplitError(f"k={k}: need at least 2 subsets")
    if not 0.0 <= ratio <= 1.0:
        raise SplitError(f"r={ratio}: the overlap ratio must be in [0, 1]")
    if num_ids < k:
        raise SplitError(f"{num_ids} identities cannot make {k} subsets")
    block = int(np.floor(num_ids * ratio / k + 1e-9))
    sizes = [num_ids // k + (1 if i < num_ids % k else 0) for i in range(k)]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    owned = tuple((bounds[i], bounds[i + 1]) for i in range(k))
    return SplitLayout(num_ids, k, ratio, block, owned)


def planted_counts(num_ids: int, k: int, ratio: float) -> dict:
    """The class counts an Eq. 5 split plants (pure arithmetic; see the module doc)."""
    layout = split_layout(num_ids, k, ratio)
    return {"block": layout.block, "conflicts": k * layout.block,
            "classes_naive": num_ids + k * layout.block, "classes_dail": max(layout.subset_sizes),
            "classes_true": num_ids, "subset_sizes": layout.subset_sizes}


def split_dataset(src: str, out_dir: str, k: int, ratio: float, share_images: bool = False, seed: int = 0,
                  shards: int = 1, name: str | None = None, manifest: bool = True, progress: bool = True) -> dict:
    """Split the dataset folder `src` into `out_dir` (all or nothing); returns the summary written to split.json."""
    from tqdm import tqdm

    info = read_dataset_info(src)
    layout = split_layout(info.num_classes, k, ratio)
    rng = np.random.default_rng([seed, 0x5B117])
    order = rng.permutation(info.num_classes)  # shuffled position -> original local label
    # subset members: original local labels of each subset, in a shuffled local order
    members = [rng.permutation(order[layout.members(i)]) for i in range(k)]
    holders: dict[int, list[tuple[int, int]]] = {}  # original label -> [(subset, local label in subset)]
    for s, labels in enumerate(members):
        for local, label in enumerate(labels):
            holders.setdefault(int(label), []).append((s, local))
    deal_start = rng.integers(0, k, info.num_classes)  # which holder gets an identity's first image
    seen = np.zeros(info.num_classes, np.int64)
    got = {}  # (subset, local) -> images written
    base = name or info.name
    names = [f"{base}_s{i}" for i in range(k)]
    offsets = np.concatenate([[0], np.cumsum(layout.subset_sizes)])[:-1].tolist()

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
        infos = [w.finish(size) for w, size in zip(writers, layout.subset_sizes)]
        table = [(i.name, i.class_offset, i.num_classes) for i in infos]
        groups = make_groups(table, [hs for hs in holders.values() if len(hs) > 1])
        write_overlaps(os.path.join(tmp, OVERLAPS_FILE), table, groups, source="recordio_tools split-overlap",
                       input=os.path.abspath(src), ratio=ratio, share_images=share_images)
        if manifest:
            write_manifest(tmp, infos, folders)
        summary = {
            "format": "fftrain-split", "version": 1, "input": os.path.abspath(src), "input_name": info.name,
            "k": k, "ratio": ratio, "share_images": share_images, "seed": seed,
            "identities_in": info.num_classes, "block": layout.block,
            "planted": {key: v for key, v in planted_counts(info.num_classes, k, ratio).items() if key != "block"},
            "images_in": int(seen.sum()), "images_out": sum(i.num_images for i in infos),
            "subsets": [{"name": i.name, "class_offset": i.class_offset, "num_classes": i.num_classes,
                         "num_images": i.num_images} for i in infos],
            # origin[s][local] = the identity's local label in the input dataset
            "origin": [[int(x) for x in m] for m in members],
            "manifest": "manifest.json" if manifest else None, "overlaps": OVERLAPS_FILE,
        }
        with open(os.path.join(tmp, SPLIT_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    return summary
