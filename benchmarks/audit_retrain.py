"""Retrain the demo on the set `fftrain audit --write-clean` wrote, and compare it with the run on the noisy set.

    python benchmarks/audit_retrain.py --work /tmp/audit_retrain --print-commands   # the pipeline, step by step
    python benchmarks/audit_retrain.py --work /tmp/audit_retrain --run-all          # run the steps not yet done
    python benchmarks/audit_retrain.py --work /tmp/audit_retrain --json-out r.json --md-out r.md   # compare

The pipeline (WORK/...): synth the noisy set (noisy/), train the demo config on it (runs/noisy/), audit its
last checkpoint with --write-clean at each threshold T (inter-class and leakage T, intra-class 0.3:
runs/noisy/audit_tT/, clean_tT/), and train the same config and seed on each cleaned set (runs/clean_tT/).
Every training takes data.manifest and the noisy set's verification.bin, so all checkpoints are scored on the
same images. With the demo's 1000 steps each training is 10-25 min on 2 shared cores; --run-all skips a step
whose output is complete (a training stopped midway resumes from its last checkpoint).

The comparison, for each T, the run on the noisy set against the run on clean_tT:
- training set: images, classes, classes after the run's fusion;
- 10-fold best-threshold accuracy (insightface's protocol) on the pairs of verification.bin: all pairs, the
  pairs without an image of a person leaked into training (ground truth, noise.json), the pairs the audit
  did not flag as leaked (leaked_verification.csv of audit_tT);
- TAR at FAR 1e-2 / 1e-3 / 1e-4 over all pairs of the verification images (the persons of the images come
  from the synthetic plan), on all images and on the images of persons not leaked;
- the run's fusion report scored pairwise against overlaps.json; for the cleaned run the ground-truth groups
  are mapped through clean_tT/clean_map.json (a removed class leaves its group).
One seed per run: the differences are as measured, with no interval for the training-to-training spread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NOISE_ARGS = ["--noise-mislabel", "0.02", "--noise-duplicates", "0.03", "--noise-leaked-ids", "15"]
DEMO_STEPS = 1000
TINY_TRAIN = ["optim.total_steps=40", "optim.warmup_steps=5", "optim.lr_milestones=[30,35]", "checkpoint.every=20"]
FARS = (1e-2, 1e-3, 1e-4)


# ---- the pipeline ----------------------------------------------------------------------------------

def _tag(threshold: float) -> str:
    return f"t{threshold:g}"


def _final_checkpoint(run_dir: str, steps: int) -> str:
    from fftrain.training.checkpoint import checkpoint_name

    return os.path.join(run_dir, "checkpoints", checkpoint_name(steps))


def pipeline(work: str, thresholds, *, nproc: int = 2, tiny: bool = False) -> list[dict]:
    """The steps, in order: {'name', 'argv', 'done': path whose presence means the step is complete}."""
    py = sys.executable
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    noisy, steps = os.path.join(work, "noisy"), 40 if tiny else DEMO_STEPS
    verification = os.path.join(noisy, "verification.bin")

    def train(run: str, data: str) -> dict:
        sets = [f"output_dir={run}", f"data.manifest={os.path.join(data, 'manifest.json')}",
                f"data.verification=[{verification}]"] + (TINY_TRAIN if tiny else [])
        argv = torchrun + [os.path.join(REPO, "fftrain", "train.py")] + [a for s in sets for a in ("--set", s)]
        return {"name": f"train {os.path.basename(run)}", "argv": argv,
                "done": os.path.join(_final_checkpoint(run, steps), "meta.json")}

    noisy_run = os.path.join(work, "runs", "noisy")
    synth = ["--tiny", "--noise-leaked-ids", "3"] if tiny else []  # the last --noise-leaked-ids counts
    out = [{"name": "synth", "argv": [py, "-m", "recordio_tools", "synth", "--out", noisy, "--quiet"] + NOISE_ARGS + synth,
            "done": os.path.join(noisy, "synth.json")},
           train(noisy_run, noisy)]
    for t in thresholds:
        clean = os.path.join(work, f"clean_{_tag(t)}")
        out.append({"name": f"audit {_tag(t)}", "done": os.path.join(clean, "clean_map.json"),
                    "argv": torchrun + ["-m", "fftrain.cli", "audit", "--checkpoint", _final_checkpoint(noisy_run, steps),
                                        "--data", noisy, "--verification", verification,
                                        "--out", os.path.join(noisy_run, f"audit_{_tag(t)}"), "--intra-threshold", "0.3",
                                        "--inter-threshold", str(t), "--leak-threshold", str(t), "--write-clean", clean,
                                        "--quiet"]})
        out.append(train(os.path.join(work, "runs", f"clean_{_tag(t)}"), clean))
    return out


def run_all(steps: list[dict]) -> int:
    """Run the steps not yet done, in order; the exit status of the first that fails, else 0."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for step in steps:
        if os.path.exists(step["done"]):
            print(f"[done] {step['name']}", flush=True)
            continue
        print(f"[run ] {step['name']}: {' '.join(step['argv'])}", flush=True)
        code = subprocess.run(step["argv"], env=env, cwd=REPO).returncode
        if code:
            print(f"audit_retrain: step '{step['name']}' failed (exit {code})", file=sys.stderr)
            return code
    return 0


# ---- measurements ----------------------------------------------------------------------------------

def verification_identities(synth_dir: str, issame: np.ndarray) -> np.ndarray:
    """The person of each image of a synthetic set's verification.bin (pair j = images 2j, 2j+1), from
    the plan its synth.json records; checked against the .bin's issame."""
    from recordio_tools.synthetic.plan import SynthConfig, make_plan

    with open(os.path.join(synth_dir, "synth.json"), encoding="utf-8") as f:
        plan = make_plan(SynthConfig(**json.load(f)["config"]))
    persons = np.array([p for a, b, _ in plan.pairs for p in (a, b)], dtype=np.int64)
    if persons.size != 2 * len(issame) or not np.array_equal(persons[0::2] == persons[1::2], np.asarray(issame, bool)):
        raise ValueError(f"{synth_dir}: the plan in synth.json does not match verification.bin's pairs")
    return persons


def all_pairs_tar(embeddings: np.ndarray, persons: np.ndarray, fars=FARS) -> dict:
    """TAR at each FAR over every pair of the given unit embeddings (genuine: same person)."""
    from fftrain.evaluation.metrics import far_key, tar_at_far

    i, j = np.triu_indices(persons.size, 1)
    scores = np.einsum("ij,ij->i", embeddings[i].astype(np.float64), embeddings[j].astype(np.float64))
    same = persons[i] == persons[j]
    out = {"images": int(persons.size), "genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum())}
    for far in fars:
        out[far_key(far)] = tar_at_far(scores, same, far).tar
    return out


def pair_accuracy(embeddings: np.ndarray, issame: np.ndarray, keep: np.ndarray) -> dict:
    """10-fold accuracy on the kept pairs; None when too few pairs of either kind are kept."""
    from fftrain.evaluation.metrics import N_FOLDS, verification_metrics

    kept = issame[keep]
    if kept.size < N_FOLDS or kept.all() or not kept.any():
        return {"pairs": int(keep.sum()), "accuracy": None, "std": None}
    rows = embeddings.reshape(-1, 2, embeddings.shape[1])[keep].reshape(-1, embeddings.shape[1])
    m = verification_metrics(rows, issame[keep])
    return {"pairs": int(keep.sum()), "accuracy": m.accuracy, "std": m.std}


def _rows(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mapped_truth(overlaps_path: str, clean_map: str | None) -> list[list[int]]:
    """overlaps.json's groups of source classes, in the cleaned set's classes when clean_map is given."""
    from recordio_tools.overlaps import read_overlaps

    groups = read_overlaps(overlaps_path).source_class_groups()
    if clean_map is None:
        return groups
    with open(clean_map, encoding="utf-8") as f:
        clean_class = json.load(f)["clean_class"]
    return [sorted({clean_class[c] for c in g if clean_class[c] >= 0}) for g in groups]


def run_fusion(run_dir: str, truth: list[list[int]]) -> dict:
    from fftrain.evaluation.merge_quality import FUSION_REPORT, merge_quality, merged_groups_from_report

    report = os.path.join(run_dir, FUSION_REPORT)
    predicted = merged_groups_from_report(report) if os.path.exists(report) else []
    return merge_quality(predicted, truth).to_dict()


def evaluate_run(run_dir: str, data_dir: str, synth_dir: str, steps: int, masks: dict, clean_map: str | None) -> dict:
    from fftrain.audit.embed import embed_verification_bin
    from fftrain.distributed import single_process_context
    from fftrain.evaluation.merge_quality import read_run_results
    from fftrain.training.checkpoint import load_backbone_from_checkpoint
    from recordio_tools.manifest import load_manifest

    manifest = load_manifest(data_dir)
    backbone = load_backbone_from_checkpoint(_final_checkpoint(run_dir, steps))
    emb, issame = embed_verification_bin(backbone, os.path.join(synth_dir, "verification.bin"),
                                         ctx=single_process_context())
    persons = verification_identities(synth_dir, issame)
    trained = read_run_results(run_dir)
    return {
        "run": run_dir, "images": manifest.num_images, "classes": manifest.num_classes,
        "classes_after_fusion": trained["classes"], "trainer_verification": trained["verification"],
        "accuracy": {name: pair_accuracy(emb, issame, keep) for name, keep in masks["pairs"].items()},
        "tar_all_pairs": {name: all_pairs_tar(emb[keep], persons[keep]) for name, keep in masks["images"].items()},
        "fusion": run_fusion(run_dir, mapped_truth(os.path.join(synth_dir, "overlaps.json"), clean_map)),
    }


def leak_masks(synth_dir: str, audit_dir: str, num_pairs: int) -> dict:
    """Pair and image selections: all, not leaked (ground truth), not flagged by the audit."""
    with open(os.path.join(synth_dir, "noise.json"), encoding="utf-8") as f:
        truth = json.load(f)
    leaked_images = np.zeros(2 * num_pairs, bool)
    leaked_images[[i for leak in truth["leaked"] for i in leak["verification_images"]]] = True
    flagged = np.zeros(2 * num_pairs, bool)
    flagged[[int(r["image"]) for r in _rows(os.path.join(audit_dir, "leaked_verification.csv"))]] = True
    every = np.ones(num_pairs, bool)
    return {"pairs": {"all pairs": every, "not leaked (truth)": ~(leaked_images[0::2] | leaked_images[1::2]),
                      "not flagged by the audit": ~(flagged[0::2] | flagged[1::2])},
            "images": {"all images": np.ones(2 * num_pairs, bool), "not leaked (truth)": ~leaked_images}}


def clean_summary(clean_dir: str, synth_dir: str) -> dict:
    with open(os.path.join(clean_dir, "manifest.json"), encoding="utf-8") as f:
        done = json.load(f)["audit_clean"]
    with open(os.path.join(synth_dir, "noise.json"), encoding="utf-8") as f:
        leaked_classes = {leak["source_class"] for leak in json.load(f)["leaked"]}
    removed = set(done["removed_classes"])
    return {"outliers_dropped": done["outliers_dropped"], "merged_components": len(done["merged_components"]),
            "removed_classes": len(removed), "removed_truly_leaked": len(removed & leaked_classes),
            "truly_leaked_classes": len(leaked_classes), "images_of_removed_classes": done["images_of_removed_classes"]}


def compare(work: str, thresholds, *, tiny: bool = False) -> dict:
    from fftrain.evaluation.verification import load_bin

    steps = 40 if tiny else DEMO_STEPS
    synth = os.path.join(work, "noisy")
    _, issame = load_bin(os.path.join(synth, "verification.bin"), cache=False)
    noisy_run = os.path.join(work, "runs", "noisy")
    result = {"work": os.path.abspath(work), "steps": steps, "seed": 0, "comparisons": {}}
    for t in thresholds:
        clean = os.path.join(work, f"clean_{_tag(t)}")
        masks = leak_masks(synth, os.path.join(noisy_run, f"audit_{_tag(t)}"), len(issame))
        noisy = evaluate_run(noisy_run, synth, synth, steps, masks, None)
        cleaned = evaluate_run(os.path.join(work, "runs", f"clean_{_tag(t)}"), clean, synth, steps, masks,
                               os.path.join(clean, "clean_map.json"))
        result["comparisons"][_tag(t)] = {"thresholds": {"intra": 0.3, "inter": t, "leak": t},
                                          "cleaning": clean_summary(clean, synth), "noisy": noisy, "cleaned": cleaned}
    return result


# ---- the table -------------------------------------------------------------------------------------

def _rows_of(run: dict) -> list[tuple[str, float | None, str]]:
    """(label, value, kind) per table row; kind 'count', 'pct', 'ratio' or 'text'."""
    from fftrain.evaluation.metrics import far_key

    rows = [("training images", run["images"], "count"), ("training classes", run["classes"], "count"),
            ("classes after fusion", run["classes_after_fusion"], "count")]
    for name, m in run["accuracy"].items():
        rows.append((f"accuracy, {name} ({m['pairs']} pairs)", m["accuracy"], "pct"))
    for name, m in run["tar_all_pairs"].items():
        for far in FARS:
            point = far_key(far)[len("tar_far_"):]
            rows.append((f"TAR at FAR {point}, all pairs of {name} ({m['images']} images)", m[far_key(far)], "pct"))
    f = run["fusion"]
    rows += [("fusion: merged components", f["merged_components"], "count"),
             ("fusion: true pairs (overlaps.json, mapped)", f["true_pairs"], "count"),
             ("fusion: predicted / correct pairs", f"{f['predicted_pairs']} / {f['correct_pairs']}", "text"),
             ("fusion precision", f["precision"], "ratio"), ("fusion recall", f["recall"], "ratio")]
    return rows


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.2f} %"
    if kind == "ratio":
        return f"{value:.3f}"
    return str(value)


def _diff(a, b, kind: str) -> str:
    if a is None or b is None or kind == "text":
        return ""
    if kind == "count":
        return f"{b - a:+d} ({b / a:.3f}x)" if a else f"{b - a:+d}"
    if kind == "pct":
        return f"{100 * (b - a):+.2f} pt"
    return f"{b - a:+.3f}"


def markdown(result: dict) -> str:
    out = []
    for tag, c in result["comparisons"].items():
        th, cl = c["thresholds"], c["cleaning"]
        out.append(f"Cleaned with thresholds {th['intra']} / {th['inter']} / {th['leak']} (intra / inter / leak): "
                   f"{cl['outliers_dropped']} outlier images dropped, {cl['merged_components']} duplicate components "
                   f"merged, {cl['removed_classes']} classes removed as leaked ({cl['removed_truly_leaked']} of the "
                   f"{cl['truly_leaked_classes']} truly leaked among them; {cl['images_of_removed_classes']} images).\n")
        out.append("| | noisy set | cleaned set | cleaned - noisy |\n|---|---:|---:|---:|")
        for (label, a, kind), (_, b, _) in zip(_rows_of(c["noisy"]), _rows_of(c["cleaned"])):
            out.append(f"| {label} | {_fmt(a, kind)} | {_fmt(b, kind)} | {_diff(a, b, kind)} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the data, runs, audits and cleaned sets")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.82],
                   help="inter-class and leakage thresholds of the audits whose cleaned sets are retrained")
    p.add_argument("--nproc", type=int, default=2, help="ranks of each training and audit (gloo)")
    p.add_argument("--tiny", action="store_true", help="smoke run: synth --tiny, 40 training steps")
    p.add_argument("--print-commands", action="store_true", help="print the pipeline's commands and stop")
    p.add_argument("--run-all", action="store_true", help="run the pipeline's steps not yet done, then compare")
    p.add_argument("--json-out", help="write the comparison as JSON")
    p.add_argument("--md-out", help="write the comparison as a markdown table")
    args = p.parse_args(argv)
    steps = pipeline(args.work, args.thresholds, nproc=args.nproc, tiny=args.tiny)
    if args.print_commands:
        for step in steps:
            print(f"# {step['name']}{' (done)' if os.path.exists(step['done']) else ''}\n"
                  f"PYTHONPATH={REPO} {' '.join(step['argv'])}")
        return 0
    if args.run_all and (code := run_all(steps)):
        return code
    missing = [s["name"] for s in steps if not os.path.exists(s["done"])]
    if missing:
        print(f"audit_retrain: not done yet: {', '.join(missing)} (--print-commands, or --run-all)", file=sys.stderr)
        return 2
    result = compare(args.work, args.thresholds, tiny=args.tiny)
    table = markdown(result)
    print(table)
    from recordio_tools.files import write_json_atomic, write_text_atomic

    if args.json_out:
        write_json_atomic(args.json_out, result, indent=1)
    if args.md_out:
        write_text_atomic(args.md_out, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
