"""Ground truth of identity overlaps between datasets: `overlaps.json`, written by `synth` and
`split-overlap`, read by whatever scores a fusion (which source classes should have merged).

    {"format": "fftrain-overlaps", "version": 1,
     "datasets": [{"name": "casia_webface", "class_offset": 125, "num_classes": 40}, ...],
     "groups": [[{"dataset": "asian_celeb", "local_label": 7, "source_class": 7},
                 {"dataset": "ms1m", "local_label": 31, "source_class": 437}], ...]}

Each group is one person present in two or more datasets; `source_class` is the dataset's
`class_offset + local_label`, the label its shards store. A class in no group is a person that
appears in one dataset only. Groups are ordered by their smallest source class, members by source class.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from .errors import UserError
from .files import write_text_atomic

OVERLAPS_FILE = "overlaps.json"


class OverlapsError(UserError, ValueError):
    """An overlaps.json that is malformed or inconsistent with its own dataset table."""


@dataclass(frozen=True)
class Member:
    dataset: str
    local_label: int
    source_class: int


@dataclass
class Overlaps:
    datasets: list[dict]  # name, class_offset, num_classes, in class-offset order
    groups: list[list[Member]]

    def source_class_groups(self) -> list[list[int]]:
        """Each group as its sorted source classes."""
        return [[m.source_class for m in g] for g in self.groups]

    def label_map(self) -> list[int]:
        """The ideal fusion as a label map: source class -> fused class (contiguous, ordered by
        smallest source class, the same convention as the trainer's fusion step)."""
        total = sum(d["num_classes"] for d in self.datasets)
        root = list(range(total))
        for g in self.groups:
            first = min(m.source_class for m in g)
            for m in g:
                root[m.source_class] = first
        ids = {c: i for i, c in enumerate(sorted(set(root)))}
        return [ids[r] for r in root]


def make_groups(datasets: Sequence[tuple[str, int, int]],
                groups: Iterable[Iterable[tuple[int, int]]]) -> list[list[Member]]:
    """Members from (dataset index, local label) pairs; `datasets` holds (name, class_offset, num_classes)."""
    out = []
    for g in groups:
        members = sorted((Member(datasets[d][0], int(local), datasets[d][1] + int(local)) for d, local in g),
                         key=lambda m: m.source_class)
        out.append(members)
    out.sort(key=lambda g: g[0].source_class)
    return out


def write_overlaps(path: str, datasets: Sequence[tuple[str, int, int]], groups: list[list[Member]],
                   **extra) -> None:
    """Write overlaps.json; `datasets` as (name, class_offset, num_classes); `extra` keys go in as they are."""
    head = {"format": "fftrain-overlaps", "version": 1,
            "datasets": [{"name": n, "class_offset": o, "num_classes": c} for n, o, c in datasets],
            "num_groups": len(groups), **extra}
    check_overlaps(Overlaps(head["datasets"], groups), path)
    # one group per line: readable and diffable
    lines = ",\n".join("  " + json.dumps([asdict(m) for m in g]) for g in groups)
    text = json.dumps(head, indent=1)[:-2] + ',\n "groups": [\n' + lines + ("\n" if lines else "") + " ]\n}\n"
    write_text_atomic(path, text)


def read_overlaps(path: str) -> Overlaps:
    """Read and check an overlaps.json (or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, OVERLAPS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except FileNotFoundError:
        raise OverlapsError(f"{path}: overlap ground truth not found (written by recordio_tools synth / "
                            "split-overlap)") from None
    except json.JSONDecodeError as e:
        raise OverlapsError(f"{path}: not valid JSON ({e})") from None
    if body.get("format") != "fftrain-overlaps":
        raise OverlapsError(f"{path}: not an fftrain overlaps file (format={body.get('format')!r})")
    try:
        datasets = [{"name": d["name"], "class_offset": int(d["class_offset"]), "num_classes": int(d["num_classes"])}
                    for d in body["datasets"]]
        groups = [[Member(m["dataset"], int(m["local_label"]), int(m["source_class"])) for m in g]
                  for g in body["groups"]]
    except (KeyError, TypeError, ValueError) as e:
        raise OverlapsError(f"{path}: missing or malformed field {e}") from None
    overlaps = Overlaps(datasets, groups)
    check_overlaps(overlaps, path)
    return overlaps


def check_overlaps(overlaps: Overlaps, source: str) -> None:
    by_name = {d["name"]: d for d in overlaps.datasets}
    seen: dict[int, int] = {}
    for gi, group in enumerate(overlaps.groups):
        if len(group) < 2:
            raise OverlapsError(f"{source}: group {gi} has {len(group)} member(s); a group is a person in two or more "
                                "datasets")
        for m in group:
            d = by_name.get(m.dataset)
            if d is None:
                raise OverlapsError(f"{source}: group {gi} names unknown dataset {m.dataset!r}")
            if not 0 <= m.local_label < d["num_classes"]:
                raise OverlapsError(f"{source}: group {gi}: {m.dataset} local label {m.local_label} outside "
                                    f"[0, {d['num_classes']})")
            if m.source_class != d["class_offset"] + m.local_label:
                raise OverlapsError(f"{source}: group {gi}: source class {m.source_class} != class_offset "
                                    f"{d['class_offset']} + local label {m.local_label} of {m.dataset}")
            if m.source_class in seen:
                raise OverlapsError(f"{source}: source class {m.source_class} is in groups {seen[m.source_class]} "
                                    f"and {gi}")
            seen[m.source_class] = gi
