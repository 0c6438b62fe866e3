#!/usr/bin/env python3
"""Task composition (the paper's Table 2) from stored Δs: for each composed task a_b and split seed,
add the Δs learned on a and on b ("add", no training) and score the sum on a_b's test split with
`worker evaluate --sum`; beside it the Δ re-optimised on a_b itself and the prompting baselines, from
the experiment that ran on the composed tasks. Prints a Markdown table (mean ± std over seeds) and
the paired difference add − re-optimised.

  python3 cluster/compose.py --components table1 --composed table2-composition [--bin .build/release]

"add" is not yet a job kind the coordinator schedules: this script is how it runs today.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def results(bin_dir, experiment):
    out = subprocess.run([os.path.join(bin_dir, "coordinator"), "results", experiment, "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    return [r for r in json.loads(out) if r["state"] == "done"]


def base(task):
    return os.path.basename(task)[:-5] if task.endswith(".json") else task


def stat(xs):
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}" + ("" if len(xs) == 5 else f" (n={len(xs)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--components", required=True, help="experiment with the component tasks' intervention jobs")
    ap.add_argument("--composed", required=True, help="experiment with the composed tasks' jobs")
    ap.add_argument("--bin", default=".build/release", help="folder with coordinator and worker")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--test", type=int, default=200)
    a = ap.parse_args()

    comp = [r for r in results(a.bin, a.components)
            if r["params"]["method"] == "intervention" and r["params"]["layer"] == a.layer]
    composed = results(a.bin, a.composed)
    delta = {(base(r["params"]["task"]), r["params"]["seed"]): r["artefact_path"] for r in comp}
    rows = {}
    for r in composed:
        p = r["params"]
        if p["method"] == "intervention" and p["layer"] != a.layer:
            continue
        rows.setdefault(p["task"], {}).setdefault(p["method"], {})[p["seed"]] = r["metrics"]["exact_match"]
    print("| composed task | 0-shot | 10-shot | Δ_a + Δ_b (add) | Δ re-optimised on a∘b | add − re-optimised |")
    print("|---|---|---|---|---|---|")
    for task in sorted(rows):
        name = base(task)
        first, second = name.split("_", 1)
        add = {}
        for seed in sorted(rows[task].get("intervention", {})):
            pa, pb = delta.get((first, seed)), delta.get((second, seed))
            if not pa or not pb:
                print(f"{name} seed {seed}: no stored Δ for {first if not pa else second}", file=sys.stderr)
                continue
            out = subprocess.run([os.path.join(a.bin, "worker"), "evaluate", "--sum", "--delta", pa, "--delta", pb,
                                  "--task", task, "--test", str(a.test), "--forms", "native", "--json"],
                                 check=True, capture_output=True, text=True).stdout
            add[seed] = json.loads(out.strip().splitlines()[-1])["native"]["exact_match"]
        re = rows[task].get("intervention", {})
        paired = [add[s] - re[s] for s in add if s in re]
        se = statistics.stdev(paired) / len(paired) ** 0.5 if len(paired) > 1 else 0.0
        diff = f"{statistics.mean(paired):+.3f} ± {se:.3f}" if paired else "–"
        print(f"| {name} | {stat(list(rows[task].get('zero-shot', {}).values()))} | "
              f"{stat(list(rows[task].get('few-shot', {}).values()))} | {stat(list(add.values()))} | "
              f"{stat(list(re.values()))} | {diff} |")


if __name__ == "__main__":
    main()
