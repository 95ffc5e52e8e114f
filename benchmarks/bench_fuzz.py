"""Hostile-input fuzzing at length: cases tried per second, tracebacks, over-bound allocations, data lost.

    python benchmarks/bench_fuzz.py --cases 200            # per target; ~10 minutes on 2 loaded cores
    python benchmarks/bench_fuzz.py --cases 20 --targets manifest-verify,config-yaml

Each target of tests/fuzz_harness.py (a file of a small real workspace and the command that reads it) gets
`--cases` mutations drawn by hypothesis (the strategies the fuzz tier uses); every case is recorded, not
asserted. The baseline, measured in the same run and alternating with the mutated cases in blocks, is the
same command on the unmutated file (after one untimed warm-up run): the table gives both rates and their
ratio (a refusal is usually cheaper than the work). Prints a table and writes JSON (default benchmarks/out/bench_fuzz_<host>_<date>.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from bench_common import machine_info, write_report  # noqa: E402
from fuzz_harness import (ALLOCATION_BOUND, TARGETS, Mutation, build_workspace, json_paths, mutations,  # noqa: E402
                          run_case)

BLOCK = 10  # mutated cases between two baseline runs


def fuzz_target(workspace, name: str, cases: int, seed: int) -> dict:
    from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings

    target = TARGETS[name]
    paths = json_paths((workspace / target.file).read_text()) if target.kind == "json" else None
    codes, failures = Counter(), []
    timing = {"fuzz_s": 0.0, "fuzz_n": 0, "clean_s": 0.0, "clean_n": 0}

    def clean_run():
        started = time.perf_counter()
        outcome = run_case(workspace, target, Mutation("none"))
        timing["clean_s"] += time.perf_counter() - started
        timing["clean_n"] += 1
        if not outcome.ok:
            failures.append(f"baseline: {outcome.problem()}")

    run_case(workspace, target, Mutation("none"))  # warm-up, untimed: first imports and caches

    @hypothesis_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutation=mutations(target.kind, paths))
    def case(mutation):
        if timing["fuzz_n"] % BLOCK == 0:
            clean_run()
        started = time.perf_counter()
        outcome = run_case(workspace, target, mutation)
        timing["fuzz_s"] += time.perf_counter() - started
        timing["fuzz_n"] += 1
        codes["traceback" if outcome.error else outcome.code] += 1
        codes["over_bound"] += outcome.peak_bytes > ALLOCATION_BOUND
        codes["data_lost"] += bool(outcome.changed)
        if not outcome.ok:
            failures.append(f"{mutation}: {outcome.problem()}"[:3000])

    case()
    counts = {"tracebacks": codes.pop("traceback", 0), "over_bound": codes.pop("over_bound", 0),
              "data_lost": codes.pop("data_lost", 0)}
    return {"target": name, "cases": timing["fuzz_n"], "exit_codes": {str(k): v for k, v in sorted(codes.items())},
            **counts, "failures": failures,
            "cases_per_s": timing["fuzz_n"] / max(timing["fuzz_s"], 1e-9),
            "clean_runs_per_s": timing["clean_n"] / max(timing["clean_s"], 1e-9)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="mutations per target (default 200)")
    parser.add_argument("--targets", help="comma-separated target names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON report path")
    args = parser.parse_args(argv)
    names = args.targets.split(",") if args.targets else sorted(TARGETS)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        workspace = build_workspace(__import__("pathlib").Path(tmp))
        for name in names:
            row = fuzz_target(workspace, name, args.cases, args.seed)
            rows.append(row)
            print(f"{name:28s} {row['cases']:5d} cases  {row['cases_per_s']:7.1f}/s  (clean {row['clean_runs_per_s']:6.1f}/s)"
                  f"  tracebacks {row['tracebacks']}  failures {len(row['failures'])}", flush=True)
    total = sum(r["cases"] for r in rows)
    summary = {"cases": total, "tracebacks": sum(r["tracebacks"] for r in rows),
               "over_bound": sum(r["over_bound"] for r in rows), "data_lost": sum(r["data_lost"] for r in rows),
               "failures": sum(len(r["failures"]) for r in rows),
               "seconds": round(time.time() - started, 1), "allocation_bound_bytes": ALLOCATION_BOUND}
    print("\n| target | cases | exit codes | tracebacks | failures | cases/s | clean runs/s | ratio |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        codes = ", ".join(f"{k}: {v}" for k, v in r["exit_codes"].items())
        print(f"| {r['target']} | {r['cases']} | {codes} | {r['tracebacks']} | {len(r['failures'])} | "
              f"{r['cases_per_s']:.1f} | {r['clean_runs_per_s']:.1f} | "
              f"{r['cases_per_s'] / max(r['clean_runs_per_s'], 1e-9):.2f} |")
    print(f"\n{summary}")
    write_report({"machine": machine_info(), "command": " ".join(sys.argv), "summary": summary, "targets": rows},
                 args.out, "bench_fuzz")
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
