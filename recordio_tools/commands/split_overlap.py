"""`recordio_tools split-overlap`: the paper's controlled experiment (its Eq. 5). One dataset is split
into k subsets of identities whose consecutive subsets share a fraction r of their identities.

    recordio_tools split-overlap data/synth/ms1m --out data/ms1m_k3_r20 -k 3 -r 0.2
    recordio_tools split-overlap data/casia --out data/casia_k2_r50 -k 2 -r 0.5 --share-images

Subset size: the largest s with s + (k-1)(s - round(r s)) <= N, about N / (k - (k-1) r); subset i
holds positions [i(s - round(r s)), ... + s) of a seeded shuffle of the N identities. Without
--share-images a shared identity's images are dealt between its subsets (no image in two);
with it, each subset gets all of them. Writes <name>_s0 .. <name>_s{k-1}, overlaps.json (ground
truth, same format as synth), split.json and manifest.json + train.idx.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import UsageError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "split-overlap", help="split one dataset into k subsets sharing a fraction r of identities (paper Eq. 5)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET_DIR", help="a dataset folder (shards + dataset.json)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder; replaced as a whole (atomically) when the split succeeds")
    p.add_argument("-k", "--subsets", type=int, default=2, metavar="K", help="number of subsets, >= 2 (default 2)")
    p.add_argument("-r", "--ratio", type=float, default=0.2, metavar="R",
                   help="fraction of a subset's identities shared with the next subset, in [0, 1) (default 0.2)")
    p.add_argument("--share-images", action="store_true",
                   help="copy every image of a shared identity into each of its subsets (default: deal the images "
                        "between them, so no image is in two subsets)")
    p.add_argument("--seed", type=int, default=0, help="seed of the identity shuffle and the image dealing (default 0)")
    p.add_argument("--name", metavar="PREFIX", help="subset names PREFIX_s0.. (default: the dataset's name)")
    p.add_argument("--shards", type=int, default=1, metavar="N", help="shards per subset (default 1)")
    p.add_argument("--no-manifest", action="store_true",
                   help="do not write manifest.json + train.idx over the subsets")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder even if it is not an earlier output of this command")
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
        print(f"wrote {args.out}: {summary['k']} subsets of {summary['subset_size']} identities, "
              f"{summary['shared_consecutive']} shared by consecutive subsets (r = {summary['achieved_ratio']:.3f}), "
              f"{summary['images_out']} images ({'shared' if summary['share_images'] else 'dealt'}); "
              f"{summary['identities_in'] - summary['identities_used']} identities left out", file=sys.stderr)
    return 0
