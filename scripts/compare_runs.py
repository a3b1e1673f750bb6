#!/usr/bin/env python3
"""Compares two bin/train run directories by their metrics.jsonl (scripts/multi_gpu_check.sh).

  compare_runs.py REFERENCE RUN [--loss-tol T] [--from-step S] [--ranks N]

Training and validation losses at every step both runs logged (from step S on) must agree to a relative
tolerance T (0: exactly). With --ranks N, RUN must have ended with its replica check: N ranks, identical
weights. Prints a line per compared step and exits 1 on any mismatch.
"""
import argparse
import json
import sys


def read(run):
    train, val, last = {}, {}, None
    with open(run + "/metrics.jsonl") as f:
        for line in f:
            j = json.loads(line)
            if "loss" in j:
                train[j["step"]] = j["loss"]
            if "val_loss" in j:
                val[j["step"]] = j["val_loss"]
            if "ranks_agree" in j:
                last = j
    return train, val, last


def main():
    p = argparse.ArgumentParser()
    p.add_argument("reference")
    p.add_argument("run")
    p.add_argument("--loss-tol", type=float, default=1e-4)
    p.add_argument("--from-step", type=int, default=0)
    p.add_argument("--ranks", type=int, default=0)
    a = p.parse_args()
    rt, rv, _ = read(a.reference)
    gt, gv, replicas = read(a.run)
    ok = True
    compared = 0
    for kind, ref, got in (("loss", rt, gt), ("val_loss", rv, gv)):
        for step in sorted(set(ref) & set(got)):
            if step < a.from_step:
                continue
            x, y = ref[step], got[step]
            if x is None or y is None:  # a skipped (non-finite) step: both runs must have skipped it
                bad = (x is None) != (y is None)
                ok &= not bad
                compared += 1
                print(f"{kind:9s} step {step:4d}: {x} vs {y}{'  MISMATCH' if bad else ''}")
                continue
            rel = abs(x - y) / max(abs(x), 1e-12)
            bad = rel > a.loss_tol
            ok &= not bad
            compared += 1
            print(f"{kind:9s} step {step:4d}: {x:.6f} vs {y:.6f}  rel {rel:.2e}{'  MISMATCH' if bad else ''}")
    if compared == 0:
        print("no common steps to compare")
        ok = False
    if a.ranks:
        if not replicas:
            print(f"{a.run}: no replica check in metrics.jsonl")
            ok = False
        else:
            agree = replicas.get("ranks_agree") and replicas.get("ranks") == a.ranks
            print(f"replicas: {replicas.get('ranks')} ranks, identical weights: {replicas.get('ranks_agree')}")
            ok &= bool(agree)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
