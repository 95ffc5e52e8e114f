"""`recordio_tools synth`: generate the synthetic six-dataset set that the demo and the tests use.

    recordio_tools synth --out data/synth              # 600 identities, ~21.7K images (1-2 min on 2 cores)
    recordio_tools synth --out /tmp/synth --tiny       # 6 x 30 identities, ~1.1K images (a few seconds)
    recordio_tools synth --out data/synth2 --ids 1200 --images-per-id 20 --seed 1
    recordio_tools synth --out data/noisy --noise-mislabel 0.02 --noise-duplicates 0.03 --noise-leaked-ids 15
    recordio_tools synth --out data/synth --unlabeled 200 --unlabeled-overlap 0.25   # + data/synth/unlabeled/

The output folder holds six dataset folders, manifest.json + train.idx (the training set; point
the trainer at the folder), overlaps.json (ground truth), verification.bin and synth.json.
How the faces are made: docs/synthetic_data.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from ..errors import UsageError
from .options import add_overwrite

# argument name -> SynthConfig field; None in argparse means "the preset's value"
_FIELDS = ["seed", "ids", "min_ids", "images_per_id", "min_images_per_id", "max_images_per_id", "overlap",
           "verification_pairs", "verification_ids", "shards", "jpeg_quality", "identity_spread", "image_drift",
           "workers"]
_NOISE_FIELDS = ["noise_mislabel", "noise_duplicates", "noise_leaked_ids"]


def add_parser(subparsers) -> None:
    from ..synthetic import SynthConfig, tiny_config

    d, t = SynthConfig(), tiny_config()
    p = subparsers.add_parser(
        "synth", help="generate the synthetic six-dataset set (demo, tests)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder; replaced as a whole (atomically) when generation succeeds")
    p.add_argument("--tiny", action="store_true",
                   help=f"test preset: {t.min_ids} identities per dataset, {t.images_per_id:g} images per identity "
                        f"on average, {t.verification_pairs} verification pairs, {t.shards} shard per dataset; "
                        "explicit options below still apply")
    p.add_argument("--seed", type=int, help=f"random seed; same seed, same bytes (default {d.seed})")
    p.add_argument("--ids", type=int, metavar="N",
                   help=f"training identities over all six datasets, split in the paper's proportions "
                        f"(default {d.ids}; --tiny {t.ids})")
    p.add_argument("--scale", type=float, metavar="F",
                   help="multiply --ids and --min-ids by F (e.g. 2 doubles every dataset)")
    p.add_argument("--min-ids", type=int, metavar="N",
                   help=f"floor on one dataset's identities (default {d.min_ids}; --tiny {t.min_ids})")
    p.add_argument("--images-per-id", type=float, metavar="N",
                   help="mean images per identity in every dataset; 0 = each dataset's paper ratio clipped to "
                        f"[--min-images-per-id, --max-images-per-id] (default {d.images_per_id:g}; "
                        f"--tiny {t.images_per_id:g}). Counts per identity vary log-normally around the mean")
    p.add_argument("--min-images-per-id", type=float, metavar="N",
                   help=f"lower clip of the paper ratio (default {d.min_images_per_id:g})")
    p.add_argument("--max-images-per-id", type=float, metavar="N",
                   help=f"upper clip of the paper ratio (default {d.max_images_per_id:g})")
    p.add_argument("--overlap", type=float, metavar="FRACTION",
                   help=f"fraction of each dataset's identities also present in another dataset, in [0, 0.5] "
                        f"(default {d.overlap:g})")
    p.add_argument("--verification-pairs", type=int, metavar="N",
                   help=f"pairs in verification.bin, half positive (default {d.verification_pairs}; "
                        f"--tiny {t.verification_pairs})")
    p.add_argument("--verification-ids", type=int, metavar="N",
                   help=f"held-out identities the pairs use, none in training (default {d.verification_ids}; "
                        f"--tiny {t.verification_ids})")
    p.add_argument("--shards", type=int, metavar="N",
                   help=f"shards per dataset (default {d.shards}; --tiny {t.shards})")
    p.add_argument("--jpeg-quality", type=int, metavar="Q",
                   help="JPEG quality 1..100 for every image; 0 = each dataset's style, 75..92 "
                        f"(default {d.jpeg_quality})")
    p.add_argument("--identity-spread", type=float, metavar="F",
                   help="difficulty: how far persons lie from the average face, x the built-in spreads; lower is "
                        f"harder (default {d.identity_spread:g})")
    p.add_argument("--image-drift", type=float, metavar="F",
                   help="difficulty: per-image change of a person's latent (std, latent units); higher is harder "
                        f"(default {d.image_drift:g})")
    p.add_argument("--workers", type=int, metavar="N",
                   help=f"rendering processes; the output does not depend on it (default {d.workers})")
    p.add_argument("--unlabeled", type=int, metavar="N",
                   help="also write <out>/unlabeled/: N identities without labels (one class, label 0), a fraction "
                        "--unlabeled-overlap of them persons of the labeled datasets, with truth.json (person, "
                        "overlap flag and labeled source class per record), for fftrain pseudo-label")
    p.add_argument("--unlabeled-overlap", type=float, default=0.25, metavar="F",
                   help="fraction of the unlabeled identities that are labeled persons (default 0.25)")
    p.add_argument("--unlabeled-images-per-id", type=float, default=10.0, metavar="N",
                   help="mean images per unlabeled identity (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_overwrite(p)
    _add_noise_options(p, d)
    p.set_defaults(run=run)


def _add_noise_options(p, d) -> None:
    g = p.add_argument_group("planted noise (ground truth in noise.json; all off by default, output then unchanged)")
    g.add_argument("--noise-mislabel", type=float, metavar="FRACTION",
                   help="fraction of each dataset's images, in [0, 0.2], showing another identity of that dataset "
                        f"than the one they are filed under (at most a third of a class) (default {d.noise_mislabel:g})")
    g.add_argument("--noise-duplicates", type=float, metavar="FRACTION",
                   help="fraction of each dataset's identities, in [0, 0.2], filed a second time under another "
                        f"label of the same dataset (default {d.noise_duplicates:g})")
    g.add_argument("--noise-leaked-ids", type=int, metavar="N",
                   help="verification identities that are also training identities, each in one dataset "
                        f"(default {d.noise_leaked_ids})")


def config_from_args(args):
    from ..synthetic import SynthConfig, tiny_config

    base = dataclasses.asdict(tiny_config() if args.tiny else SynthConfig())
    given = {f: getattr(args, f) for f in _FIELDS + _NOISE_FIELDS if getattr(args, f) is not None}
    if args.scale is not None:
        if args.scale <= 0:
            raise UsageError(f"--scale {args.scale} must be > 0")
        for f in ("ids", "min_ids"):
            given[f] = max(2, int(round(given.get(f, base[f]) * args.scale)))
    try:
        return SynthConfig(**{**base, **given})
    except ValueError as e:
        raise UsageError(f"bad options: {e}".replace("_", "-")) from None


def _write_unlabeled(args, config) -> None:
    import os

    from ..synthetic import UNLABELED_DIR, generate_unlabeled

    out = os.path.join(args.out, UNLABELED_DIR)
    info = generate_unlabeled(config, out, num_ids=args.unlabeled, overlap=args.unlabeled_overlap,
                              images_per_id=args.unlabeled_images_per_id, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {out}: {info['images']} unlabeled images of {info['identities']} identities, "
              f"{info['overlapping_identities']} of them labeled persons ({info['overlapping_images']} images)",
              file=sys.stderr)


def run(args) -> int:
    from ..synthetic import generate

    from ..shards import check_out

    config = config_from_args(args)
    check_out(args.out, [], "synth", args.overwrite)
    start = time.perf_counter()
    if args.unlabeled is not None:
        from ..synthetic import make_unlabeled_plan

        try:  # checked before the labeled set is written
            make_unlabeled_plan(config, args.unlabeled, args.unlabeled_overlap, args.unlabeled_images_per_id)
        except ValueError as e:
            raise UsageError(f"bad options: {e}") from None
    summary = generate(config, args.out, progress=not args.quiet)
    if args.unlabeled is not None:
        _write_unlabeled(args, config)
    if not args.quiet:
        print(f"wrote {args.out}: {summary['num_classes']} identities, {summary['num_images']} images in "
              f"{len(summary['datasets'])} datasets, {summary['overlap_groups']} planted overlaps, "
              f"{summary['verification']['pairs']} verification pairs ({time.perf_counter() - start:.1f} s)",
              file=sys.stderr)
        for d in summary["datasets"]:
            print(f"  {d['name']:<14} classes [{d['class_offset']}, {d['class_offset'] + d['num_classes']})  "
                  f"{d['num_images']} images", file=sys.stderr)
        if "noise" in summary:
            n = summary["noise"]
            print(f"  planted noise ({n['file']}): {n['mislabeled_images']} mislabeled images, "
                  f"{n['duplicate_pairs']} duplicate class pairs, {n['leaked_ids']} leaked verification ids",
                  file=sys.stderr)
    return 0
