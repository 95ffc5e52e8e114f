"""`recordio_tools relabel`: apply a fusion label map (from `fftrain fuse`) to a training set.

    recordio_tools relabel data/train --label-map runs/x/fuse-t1_0.700/label_map.json --in-place
    recordio_tools relabel data/train --label-map label_map.json --out data/train_fused
    recordio_tools relabel data/synth --from-overlaps data/synth/overlaps.json --in-place   # ideal map

The map (source class -> fused class) is checked against TRAINSET/manifest.json first: format
"fftrain-label-map", the same dataset names and class counts in manifest order, one entry per
source class, fused ids contiguous 0..K-1. --from-overlaps computes the ideal map from a
synthetic set's ground truth instead.

--in-place rewrites only the label bytes of each image record (records keep their sizes and
offsets, so every .idx and train.idx stay valid). Each shard is written to a temporary file and
renamed over the original, and TRAINSET/relabel.journal.json records each shard's old and new
SHA-256: an interruption at any point (Ctrl-C, kill -9, power loss) leaves every shard wholly old
or wholly new, and running the same command again finishes the job. A different map is refused
while a run is unfinished or after it finished. At the end manifest.json gets "labels": "fused",
"num_classes_fused" and the map's hash, and relabel_label_map.json is written beside it; a rerun
is then a no-op. Labels stored as one float (flag 0) stay one float and must be below 2^24.

--out DIR writes a new training set instead: DIR/<--name>/ (one dataset, num_classes_fused classes,
exact two-float labels, images copied unchanged, --shards shards), DIR/manifest.json, DIR/train.idx
and DIR/label_map.json; DIR is replaced as a whole at the end. Details: recordio_tools/relabel/ (package doc).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import UsageError
from ..manifest import MANIFEST_FILE, load_manifest
from .options import add_overwrite


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("relabel", help="apply a fusion label map to a training set (in place or a copy)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trainset", metavar="TRAINSET", help="training-set folder (or its manifest.json)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--label-map", metavar="JSON", help="label_map.json written by `fftrain fuse`")
    source.add_argument("--from-overlaps", metavar="JSON",
                        help="overlaps.json ground truth (synth / split-overlap): apply the ideal fusion")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--in-place", action="store_true",
                      help="rewrite the label bytes of TRAINSET's shards (journaled; rerun to resume)")
    mode.add_argument("--out", metavar="DIR", help="write a new fused training set to DIR (replaced as a whole)")
    parser.add_argument("--copy-referenced", action="store_true",
                        help="--in-place: first copy into TRAINSET the datasets it references from other folders "
                             "(without it those are refused: other training sets may use them)")
    parser.add_argument("--name", default="fused", help="--out: name of the fused dataset (default: fused)")
    parser.add_argument("--shards", type=int, metavar="N",
                        help="--out: number of shards (default: as many as TRAINSET has)")
    add_overwrite(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..relabel import RelabelError, label_map_from_overlaps, read_label_map, relabel_copy, relabel_in_place

    if args.in_place and (args.shards is not None or args.name != "fused"):
        raise UsageError("--name and --shards apply to --out only (in place keeps the shard layout)")
    if args.shards is not None and args.shards < 1:
        raise UsageError(f"--shards must be >= 1, got {args.shards}")
    manifest_file = os.path.join(args.trainset, MANIFEST_FILE) if os.path.isdir(args.trainset) else args.trainset
    if args.out:
        from ..shards import check_out

        check_out(args.out, [args.trainset], "relabel", args.overwrite)
    started = time.perf_counter()
    try:
        manifest = load_manifest(manifest_file)
        if args.label_map:
            label_map = read_label_map(args.label_map, manifest)
        else:
            label_map = label_map_from_overlaps(args.from_overlaps, manifest)
        summary = (f"{manifest.num_classes} source -> {label_map.num_fused} fused classes, "
                   f"{manifest.num_images} images")
        if args.in_place:
            result = relabel_in_place(manifest_file, label_map, copy_referenced_shards=args.copy_referenced)
        else:
            out_manifest = relabel_copy(manifest_file, label_map, args.out, name=args.name, num_shards=args.shards)
    except RelabelError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        if args.in_place:
            print("recordio_tools relabel: interrupted; every shard is wholly old or wholly new; run the same "
                  "command again to finish", file=sys.stderr)
        else:
            print("recordio_tools relabel: interrupted; --out folder left as it was", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - started
    if not args.in_place:
        print(f"relabel: wrote {os.path.abspath(args.out)}: {summary} in dataset {args.name!r}, "
              f"{len(out_manifest.rec_paths())} shard(s); {elapsed:.1f} s")
    elif result.status == "already":
        print(f"relabel: {manifest_file}: labels already fused with this map (sha256 {label_map.sha256[:12]}...); "
              "nothing to do")
    else:
        print(f"relabel: {manifest_file}: {summary}; rewrote {result.shards_rewritten} of {result.shards_total} "
              f"shard(s) in place (labels only); manifest marked fused; {elapsed:.1f} s")
    return 0
