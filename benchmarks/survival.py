"""Benchmark: the aggregated survival path (engine counts -> KM/AJ, person-time -> PWE) on N journeys.

Usage: .venv/bin/python benchmarks/survival.py [--n 10000000] [--chunk 1000000] [--data /tmp/jl_bench_survival]

Synthetic survival/exposure Parquet (engine contract, known log-HRs) is generated once per N and
cached in --data (``--distinct-chunks`` chunks are simulated, the others are hard-linked copies, so
estimates have the precision of the distinct rows); only the aggregated path is timed. Prints wall-clock figures per step.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import ibis
import numpy as np
import pandas as pd

from journeylab import survival as sv

TRUTH = {"email": 0.10, "paid_search": 0.25, "social": 0.0, "display": -0.10}


def generate(n: int, chunk: int, out: Path, distinct: int) -> None:
    (out / "survival").mkdir(parents=True, exist_ok=True)
    (out / "exposure").mkdir(parents=True, exist_ok=True)
    done = out / f"done_{n}"
    if done.exists():
        return
    t0 = time.perf_counter()
    import os
    for k, lo in enumerate(range(0, n, chunk)):
        m = min(chunk, n - lo)
        fs, fe = out / "survival" / f"part{k:04d}.parquet", out / "exposure" / f"part{k:04d}.parquet"
        if k >= distinct and m == chunk:   # reuse an earlier chunk (hard link): same timing, less generation
            os.link(out / "survival" / f"part{k % distinct:04d}.parquet", fs)
            os.link(out / "exposure" / f"part{k % distinct:04d}.parquet", fe)
            continue
        s, e = sv.synthetic_tables(m, seed=100 + k, log_hr=TRUTH, touch_rate={t: 0.02 for t in TRUTH}, id_offset=lo)
        s.to_parquet(fs, index=False)
        e.drop(columns=["customer_id", "first_touchpoint"]).to_parquet(fe, index=False)
    done.touch()
    print(f"generated {n:,} journeys in {time.perf_counter() - t0:.0f} s (not part of the benchmark)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=1_000_000)
    ap.add_argument("--data", default="/tmp/jl_bench_survival")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distinct-chunks", type=int, default=2,
                    help="generate this many distinct chunks, hard-link the rest (generation is slow, not benchmarked)")
    args = ap.parse_args()
    out = Path(args.data) / str(args.n)
    generate(args.n, args.chunk, out, args.distinct_chunks)
    con = ibis.duckdb.connect(threads=args.threads)
    st = con.read_parquet(str(out / "survival" / "*.parquet"))
    ex = con.read_parquet(str(out / "exposure" / "*.parquet"))
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    n = st.count().to_pyarrow().as_py()
    n_ex = ex.count().to_pyarrow().as_py()
    counts = sv.aggregate_event_counts(st, (), 1 / 24)
    t1 = time.perf_counter()
    cc = sv.ConversionCurves().fit_counts(counts, None)
    t2 = time.perf_counter()
    by = sv.aggregate_event_counts(st, ("first_touchpoint",), 1 / 24)
    lr = sv.logrank_from_counts(by, "first_touchpoint")
    t3 = time.perf_counter()
    th = sv.TouchpointHazards("piecewise_exponential", cap=10).fit(ex, [f"cum_{t}" for t in TRUTH], adjust=["segment"])
    t4 = time.perf_counter()
    total = time.perf_counter() - t_all
    print(f"journeys: {n:,}  exposure rows: {n_ex:,}  distinct 1-hour times: {len(counts):,}")
    print(f"engine counts (overall)            {t1 - t0:7.1f} s")
    print(f"KM + Aalen-Johansen from counts    {t2 - t1:7.2f} s")
    print(f"counts by first_touchpoint + log-rank {t3 - t2:5.1f} s  (chi2={lr['statistic']:.1f})")
    print(f"person-time aggregation + PWE fit  {t4 - t3:7.1f} s  ({len(th.person_time_):,} interval x pattern rows)")
    print(f"TOTAL aggregated path              {total:7.1f} s")
    print("P(convert by 7/30/90 d):", {h: round(v["p"], 4) for h, v in cc.p_convert_.items()})
    print(th.summary_.assign(truth=th.summary_["touchpoint"].map(TRUTH)).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
