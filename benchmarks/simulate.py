"""Simulator throughput: stream a large log to Parquet in chunks and report events/s and peak memory.

Usage: .venv/bin/python benchmarks/simulate.py [--customers 150000] [--chunk 50000] [--out /tmp/jl_sim_bench]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from journeylab import simulate
from journeylab.config import load_params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, nargs="+", default=[20000, 150000])
    ap.add_argument("--chunk", type=int, default=50000)
    ap.add_argument("--mc-leads", type=int, default=200000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="jl_sim_bench_"))
    for n in args.customers:
        params = load_params(overrides={
            "simulate.n_customers": n, "simulate.chunk_customers": args.chunk,
            "simulate.truth_mc_leads": args.mc_leads,
            "simulate.output": str(root / f"events_{n}.parquet"), "simulate.truth": str(root / f"truth_{n}.json"),
            "simulate.truth_churn": str(root / f"truth_churn_{n}.parquet")})
        t = time.perf_counter()
        m = simulate.run_stage(params)
        s = time.perf_counter() - t
        size = Path(m["output"]).stat().st_size / 1e6
        rg = pq.read_metadata(m["output"]).num_row_groups
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"customers={n:>9,} chunk={args.chunk:,} events={m['rows_written']:>12,} time={s:7.1f}s "
              f"rate={m['rows_written'] / s / 1e6:5.2f} M rows/s file={size:,.0f} MB row_groups={rg} peak_rss={rss:,.0f} MB")
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
