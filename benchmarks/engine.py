"""Engine benchmark: simulate N events, then time ingest + all engine outputs (DuckDB).

Usage: .venv/bin/python benchmarks/engine.py 1e6 [--dir /tmp/jl_bench] [--pandas]
Prints wall time, events/s and peak RSS (sampled every 0.2 s) for ingest and build, and with
--pandas the ratio to a straightforward pandas `paths` table (sort + groupby list).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
EVENTS_PER_CUSTOMER = 60.5   # measured on the default simulator (90 815 events / 1 500 customers)


class Peak:
    """Peak RSS of this process and its children while active."""
    def __enter__(self):
        self.proc, self.peak, self.stop = psutil.Process(), 0, False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            self.peak = max(self.peak, rss)
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()


def pandas_paths(path: Path):
    import pandas as pd
    e = pd.read_parquet(path, columns=["customer_id", "ts", "event_id", "touchpoint", "kind", "phase"])
    e = e[(e.kind == "touch") & e.phase.isin(["pre_purchase", "purchase"])]
    e = e.sort_values(["customer_id", "ts", "event_id"])
    p = e.groupby("customer_id", sort=False)["touchpoint"].agg(list)
    return p.map(" > ".join).value_counts()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("events", type=float)
    ap.add_argument("--dir", default="/tmp/jl_bench")
    ap.add_argument("--pandas", action="store_true")
    a = ap.parse_args()
    from conftest import make_project
    from journeylab import engine, ingest, simulate
    n_cust = int(a.events / EVENTS_PER_CUSTOMER)
    params = make_project(Path(a.dir) / f"n{int(a.events)}", **{"simulate.n_customers": n_cust})
    t = time.perf_counter()
    simulate.run_stage(params)
    print(f"simulate: {n_cust} customers in {time.perf_counter() - t:.1f} s", flush=True)
    with Peak() as pk:
        t = time.perf_counter()
        ingest.run_stage(params)
        t_ing = time.perf_counter() - t
        t = time.perf_counter()
        m = engine.run_stage(params)
        t_eng = time.perf_counter() - t
    n = m["events"]
    total = t_ing + t_eng
    print(f"events {n:,}: ingest {t_ing:.1f} s, build {t_eng:.1f} s, total {total:.1f} s, "
          f"{n / total:,.0f} events/s, peak RSS {pk.peak / 2**30:.2f} GB", flush=True)
    print("engine seconds:", m["seconds"], flush=True)
    if a.pandas:
        with Peak() as pk2:
            t = time.perf_counter()
            pandas_paths(engine.config.path(params, "data/clean/events.parquet"))
            t_pd = time.perf_counter() - t
        print(f"pandas paths: {t_pd:.1f} s (peak RSS {pk2.peak / 2**30:.2f} GB); engine paths "
              f"{m['seconds']['paths']:.1f} s + shared prepare {m['seconds']['prepare']:.1f} s; "
              f"ratio pandas/(prepare+paths) = {t_pd / (m['seconds']['paths'] + m['seconds']['prepare']):.1f}x",
              flush=True)


if __name__ == "__main__":
    main()
