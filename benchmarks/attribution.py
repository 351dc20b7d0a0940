"""Attribution benchmarks (prints figures; targets in benchmarks/README.md, section "Attribution").

1. ChannelAttribution sample (tests/data/mta_data.csv.gz): our exact Markov orders 1-3 vs
   ChannelAttribution ``markov_model`` at its defaults (C++, simulated), side by side in one run.
   ChannelAttribution is GPL and not a dependency: pass ``--ca-python PATH`` = a Python that has it
   installed (e.g. a scratch venv: pip install Cython numpy pandas matplotlib "setuptools>=77";
   pip install --no-build-isolation ChannelAttribution). Target: time ratio ours/CA <= 0.25.
   Also: the same chains from tokens with the sparse-LU reference solver (one LU per removal, the
   solver before the batched dense / proven-accuracy iterative ones) and the largest removal-effect
   difference; orders 1-3 with 200 bootstrap replicates (the pipeline's setting).
2. 10^6 distinct paths, order-1 Markov + 200 bootstrap replicates. Target <= 60 s.
3. Shapley over 15 channels, every one of the 2^15 - 1 coalitions observed. Target <= 10 s.

Run: .venv/bin/python benchmarks/attribution.py [--ca-python /tmp/cavenv/bin/python] [--quick]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from journeylab import attribution as A

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "mta_data.csv.gz"
KW = dict(conversions="total_conversions", nulls="total_null", value="total_conversion_value")

CA_SCRIPT = """
import json, sys, time, pandas as pd
from ChannelAttribution import markov_model
d = pd.read_csv(sys.argv[1])
out = {}
for order in (1, 2, 3):
    best = float('inf')
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        markov_model(d, "path", "total_conversions", var_value="total_conversion_value", var_null="total_null",
                     order=order, verbose=False, flg_pro=False)
        best = min(best, time.perf_counter() - t)
    out[order] = best
print(json.dumps(out))
"""


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_sample(ca_python: str | None, repeat: int) -> None:
    d = pd.read_csv(SAMPLE)
    ours = {k: best_of(lambda k=k: A.markov_attribution(d, k, **KW), repeat) for k in (1, 2, 3)}
    # the previous solver (one sparse LU per removal) on the same tokens, and the largest difference
    tok = A._tokenise(d, **KW)
    lu = {k: best_of(lambda k=k: A._markov_from_tokens(tok, k, method="lu"), repeat) for k in (1, 2, 3)}
    new = {k: best_of(lambda k=k: A._markov_from_tokens(tok, k), repeat) for k in (1, 2, 3)}
    diff = {}
    for k in (1, 2, 3):
        a, b = A._markov_from_tokens(tok, k), A._markov_from_tokens(tok, k, method="lu")
        diff[k] = float(np.max(np.abs(a.attribution.removal_effect - b.attribution.removal_effect)))
    ca = None
    if ca_python:
        res = subprocess.run([ca_python, "-c", CA_SCRIPT, str(SAMPLE), str(repeat)], capture_output=True, text=True)
        if res.returncode == 0:
            ca = {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}
        else:
            print("ChannelAttribution run failed:", res.stderr.strip().splitlines()[-1:])
    print(f"[sample] 10,000 paths, 12 channels, best of {repeat}")
    for k in (1, 2, 3):
        line = (f"  order {k}: ours exact {ours[k]*1e3:7.1f} ms (from tokens: {new[k]*1e3:5.1f} ms vs the sparse-LU "
                f"reference {lu[k]*1e3:5.1f} ms, max |RE diff| {diff[k]:.0e})")
        if ca:
            line += f" | ChannelAttribution (sim, defaults) {ca[k]*1e3:7.1f} ms | ratio {ours[k]/ca[k]:.2f}"
        print(line)
    if ca:
        print(f"  orders 1-3 total: ours {sum(ours.values())*1e3:.1f} ms, CA {sum(ca.values())*1e3:.1f} ms, "
              f"ratio {sum(ours.values())/sum(ca.values()):.2f} (target <= 0.25)")
    boot = {k: best_of(lambda k=k: A.markov_attribution(d, k, bootstrap=200, seed=1, **KW), 1) for k in (1, 2, 3)}
    print("  with 200 bootstrap replicates: " + ", ".join(f"order {k} {v:.2f} s" for k, v in boot.items()))


def random_paths(n_paths: int, n_channels: int, max_len: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = np.array([f"ch{i:02d}" for i in range(n_channels)])
    lengths = rng.integers(4, max_len + 1, n_paths)
    codes = rng.integers(0, n_channels, lengths.sum())
    tokens = names[codes]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    paths = [" > ".join(tokens[bounds[i]:bounds[i + 1]]) for i in range(n_paths)]
    df = pd.DataFrame({"path": paths}).drop_duplicates("path").reset_index(drop=True)
    df["conversions"] = rng.poisson(1.0, len(df)).astype(float)
    df["nulls"] = rng.poisson(3.0, len(df)).astype(float)
    df["value"] = df["conversions"] * rng.gamma(2.0, 20.0, len(df))
    return df


def bench_large(n_paths: int, B: int) -> None:
    df = random_paths(int(n_paths * 1.3), 20, 12, seed=1).head(n_paths)
    t = time.perf_counter()
    point = A.markov_attribution(df, 1)
    el0 = time.perf_counter() - t
    t = time.perf_counter()
    res = A.markov_attribution(df, 1, bootstrap=B, seed=0)
    el = time.perf_counter() - t
    print(f"[large] {len(df):,} distinct paths (20 channels, 4-12 touches): order-1 exact Markov + {B} bootstrap "
          f"replicates: {el:.1f} s (target <= 60 s; point estimate alone {el0:.1f} s); max CI width / estimate = "
          f"{((res.ci_high - res.ci_low) / res.conversions).max():.3f}; estimate inside CI: "
          f"{bool(((res.ci_low <= point.conversions) & (point.conversions <= res.ci_high)).all())}")


def bench_shapley() -> None:
    n = 15
    rng = np.random.default_rng(2)
    names = [f"ch{i:02d}" for i in range(n)]
    masks = np.arange(1, 1 << n)
    coal = pd.DataFrame({"coalition": [",".join(names[i] for i in range(n) if m >> i & 1) for m in masks]})
    coal["journeys"] = rng.integers(20, 200, len(coal)).astype(float)
    coal["conversions"] = rng.binomial(coal["journeys"].astype(int), rng.uniform(0.05, 0.5, len(coal))).astype(float)
    coal["value"] = coal["conversions"] * 30.0
    t = time.perf_counter()
    df = A.shapley_attribution(coalitions=coal)
    el = time.perf_counter() - t
    print(f"[shapley] 15 channels, all {len(coal):,} coalitions observed, exact: {el:.2f} s (target <= 10 s); "
          f"efficiency error {abs(df.conversions.sum() - coal.conversions.sum()):.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ca-python", default=None, help="python with ChannelAttribution installed")
    ap.add_argument("--quick", action="store_true", help="1e5 paths, 20 replicates")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    bench_sample(args.ca_python, args.repeat)
    bench_shapley()
    bench_large(100_000 if args.quick else 1_000_000, 20 if args.quick else 200)


if __name__ == "__main__":
    sys.exit(main())
