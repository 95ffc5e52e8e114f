"""`recordio_tools split-overlap`: the paper's controlled experiment (FaceFusion Eq. 5). One dataset of N
identities is split into k subsets in a cycle: subset i shares a block of floor(N*r/k) identities with
subset i+1 (mod k), so k*floor(N*r/k) identities (about N*r) are conflicts, each in two subsets.

    recordio_tools split-overlap data/casia --out data/casia_k8_r20 -k 8 -r 0.2
    recordio_tools split-overlap data/ms1m --out data/ms1m_k2_r10_dup -k 2 -r 0.1 --share-images

Without --share-images a shared identity's images are dealt between its two subsets (no image in
two, Eq. 5); with it, both get all of them (the paper's Table 5 S'_ms1m). Prints the planted counts
(classes for naive concatenation, DAIL's largest softmax, conflicts; the paper's Tables 4-5) and
writes <name>_s0 .. <name>_s{k-1}, overlaps.json (ground truth, same format as synth), split.json
and manifest.json + train.idx.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from .options import add_overwrite


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "split-overlap", help="split one dataset into k subsets sharing a fraction r of identities (paper Eq. 5)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET_DIR", help="a dataset folder (shards + dataset.json)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder; replaced as a whole (atomically) when the split succeeds")
    p.add_argument("-k", "--subsets", type=int, default=2, metavar="K", help="number of subsets, >= 2 (default 2)")
    p.add_argument("-r", "--ratio", type=float, default=0.2, metavar="R",
                   help="shared identities as a fraction of the dataset's N, in [0, 1]; subset i shares "
                        "floor(N*r/k) with subset i+1 mod k (default 0.2)")
    p.add_argument("--share-images", action="store_true",
                   help="copy every image of a shared identity into each of its subsets (default: deal the images "
                        "between them, so no image is in two subsets)")
    p.add_argument("--seed", type=int, default=0, help="seed of the identity shuffle and the image dealing (default 0)")
    p.add_argument("--name", metavar="PREFIX", help="subset names PREFIX_s0.. (default: the dataset's name)")
    p.add_argument("--shards", type=int, default=1, metavar="N", help="shards per subset (default 1)")
    p.add_argument("--no-manifest", action="store_true",
                   help="do not write manifest.json + train.idx over the subsets")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_overwrite(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..overlap_split import SplitError, split_dataset

    if args.shards < 1:
        raise UsageError(f"--shards {args.shards} must be >= 1")
    from ..shards import check_out

    check_out(args.out, [args.dataset], "split-overlap", args.overwrite)
    try:
        summary = split_dataset(args.dataset, args.out, args.subsets, args.ratio, share_images=args.share_images,
                                seed=args.seed, shards=args.shards, name=args.name, manifest=not args.no_manifest,
                                progress=not args.quiet)
    except SplitError as e:
        raise UsageError(str(e)) from None
    if not args.quiet:
        planted = summary["planted"]
        print(f"wrote {args.out}: {summary['k']} subsets of {min(planted['subset_sizes'])}-"
              f"{max(planted['subset_sizes'])} identities, blocks of {summary['block']} shared cyclically, "
              f"{summary['images_out']} images ({'copied' if summary['share_images'] else 'dealt'})\n"
              f"planted: {planted['conflicts']} conflicting identities; classes: naive {planted['classes_naive']}, "
              f"DAIL (largest subset) {planted['classes_dail']}, true identities {planted['classes_true']}",
              file=sys.stderr)
    return 0
