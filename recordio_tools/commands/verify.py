"""`recordio_tools verify`: check every record of a .rec, a dataset folder or a training set; list every problem.

    recordio_tools verify data/faces_emore/train.rec     # one .rec with its .idx
    recordio_tools verify data/casia                      # a dataset folder
    recordio_tools verify data/train                      # a training set: all shards + train.idx

Per shard: the .idx parses; every index entry's offset lies inside the .rec and starts a record
(magic word, continuation flags, lengths, nothing truncated); each payload has an IRHeader whose
label is a class id inside the dataset's range ([class_offset, class_offset + num_classes) for a
dataset, [0, identities) for an insightface .rec, any class id for a plain .rec) and an image
that decodes (`--no-decode` skips that, the slow part); a sequential scan of the .rec finds the
same records as the index. Per dataset / training set: image counts agree with the JSON files,
class offsets are the running sum, every shard file exists, and train.idx equals the index of
all shards concatenated. Each problem is printed as one line `FILE: key K: problem` (or
`byte B`, `line L`), then a summary; the exit status is 1 when there is any problem, else 0.
"""

from __future__ import annotations

import argparse

from ..inspection import classify_path
from ..verify import verify_path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("verify", help="check every record; list every bad record by file and key",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a .rec file (with its .idx), a dataset folder, or a training-set folder / "
                                     "manifest.json")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding the images (framing, index and "
                                                                 "labels only; much faster)")
    parser.set_defaults(run=run)


def run(args) -> int:
    kind, path = classify_path(args.path)
    report = verify_path(kind, path, decode=not args.no_decode)
    for line in report.problems:
        print(line)
    status = f"{len(report.problems)} problem(s)" if report.problems else "no problems"
    print(f"verify: {args.path}: {report.records} records in {report.shards} shard(s) checked: {status}")
    return 1 if report.problems else 0
