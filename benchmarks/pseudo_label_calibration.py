"""Pseudo-labels with the fixed clustering edge threshold against the calibrated one, side by side.

    python benchmarks/pseudo_label_calibration.py --json-out benchmarks/out/pseudo_label_calibration.json
    python benchmarks/pseudo_label_calibration.py --checkpoint RUN/checkpoints/step-00000500 \
        RUN/checkpoints/step-00001000 --unlabeled SYNTH/unlabeled        # the demo's own networks

Feature-level worlds (`fftrain.pseudo_label.planted.planted_world`, 128-d, 1000 labeled classes, 500
unlabeled identities, 25 % overlap) at two model strengths: image noise 0.9 (the benchmarks' base
world, a strong model) and 1.2 (a weak one, as an early checkpoint). With --checkpoint, also the demo's
networks on `recordio_tools synth --unlabeled` images (ground truth: truth.json). Each is pseudo-labeled
twice with the same pipeline (`fftrain.pseudo_label.pipeline.pseudo_label`): the backend's fixed edge
threshold (infomap 0.45) with every cluster written (min purity 0, as before calibration), and the
defaults (edge threshold auto, low-purity clusters reported, not written). Scored on the images that are
truly of new identities and were separated as disjoint: pairwise precision / recall of the written
clusters (a dropped image counts as a singleton), clusters written, and the true identities among them.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORLDS = {"strong (noise 0.9)": dict(noise=0.9), "weak (noise 1.2)": dict(noise=1.2)}


def _settings(**common):
    from fftrain.pseudo_label.pipeline import PseudoLabelOptions

    return {"fixed": PseudoLabelOptions(threshold=None, min_purity=0.0, **common),
            "calibrated": PseudoLabelOptions(**common)}


def score(result, identity: np.ndarray, overlap: np.ndarray) -> dict:
    from fftrain.pseudo_label.metrics import pairwise_scores, singletons_for_dropped

    new = result.disjoint & ~overlap
    pairwise = pairwise_scores(singletons_for_dropped(result.clusters[new]), identity[new])
    return {"edge": result.edge.value, "edge_how": result.edge.how, "edge_far": result.edge.far,
            "clusters": result.num_clusters, "true_new_identities": int(np.unique(identity[new]).size),
            "clustered_images": int((result.clusters[new] >= 0).sum()), "new_images": int(new.sum()),
            "low_purity_clusters": len(result.low_purity),
            "low_purity_images": int(sum(c["size"] for c in result.low_purity)), "pairwise": pairwise}


def run(embeddings, proxies, identity, true_overlap, **common) -> dict:
    from fftrain.pseudo_label.pipeline import PseudoLabelError, pseudo_label

    out = {}
    for name, options in _settings(**common).items():
        try:
            out[name] = score(pseudo_label(embeddings, proxies, options), identity, true_overlap)
        except PseudoLabelError as e:
            out[name] = {"error": str(e)}
    return out


def planted(seeds: list[int]) -> list[dict]:
    from fftrain.pseudo_label.planted import planted_world

    rows = []
    for world, overrides in WORLDS.items():
        for seed in seeds:
            w = planted_world(overlap=0.25, seed=seed, **overrides)
            rows.append({"world": world, "seed": seed, **run(w.embeddings, w.proxies, w.identity, w.overlap)})
    return rows


def demo(checkpoints: list[str], unlabeled: str) -> list[dict]:
    import json

    from fftrain.distributed import single_process_context
    from fftrain.pseudo_label.collection import UnlabeledImages, embed_share
    from fftrain.training.checkpoint import load_backbone_from_checkpoint, load_proxies_from_checkpoint

    truth = json.load(open(os.path.join(unlabeled, "truth.json"), encoding="utf-8"))
    identity, overlap = np.asarray(truth["identity"]), np.asarray(truth["overlap"], bool)
    images = UnlabeledImages(unlabeled)
    rows = []
    for checkpoint in checkpoints:
        backbone = load_backbone_from_checkpoint(checkpoint).eval()
        embeddings = embed_share(images, backbone, single_process_context(), 64)
        proxies = load_proxies_from_checkpoint(checkpoint).numpy()
        for mode in ("auto", "none"):  # 'none': the user's answer when the separation sees one mode
            rows.append({"world": f"demo {os.path.basename(checkpoint)}, --overlap {mode}", "seed": None,
                         **run(embeddings, proxies, identity, overlap, overlap=mode)})
    return rows


def _cell(s: dict) -> str:
    if "error" in s:
        return "stopped: " + s["error"][:60] + "..."
    p = s["pairwise"]
    return (f"{s['edge']:.3f} | {s['clusters']} ({s['true_new_identities']} true) | {p['precision']:.3f} / "
            f"{p['recall']:.3f} | {s['low_purity_clusters']} ({s['low_purity_images']} img)")


def table(rows: list[dict]) -> str:
    out = ["| world | seed | setting | edge threshold | clusters written | pairwise P / R | low-purity clusters |",
           "|---|---:|---|---:|---:|---|---:|"]
    for r in rows:
        for name in ("fixed", "calibrated"):
            out.append(f"| {r['world']} | {r['seed'] if r['seed'] is not None else '-'} | {name} | {_cell(r[name])} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="2,3,4", help="planted-world seeds (default 2,3,4)")
    p.add_argument("--checkpoint", nargs="*", default=[], help="demo checkpoints (with --unlabeled)")
    p.add_argument("--unlabeled", help="recordio_tools synth --unlabeled folder (truth.json)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    rows = planted([int(s) for s in args.seeds.split(",") if s]) if args.seeds else []
    if args.checkpoint:
        rows += demo(args.checkpoint, args.unlabeled)
    print(table(rows))
    if args.json_out:
        from bench_common import machine_info
        from recordio_tools.files import json_safe, write_json_atomic

        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        write_json_atomic(args.json_out, json_safe({"machine": machine_info(), "command": sys.argv, "rows": rows,
                                                    "table": table(rows)}), indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
