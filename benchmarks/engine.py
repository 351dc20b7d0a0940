"""Engine benchmark: simulated (or replicated) raw log -> timed ingest + all engine outputs (DuckDB).

Usage:
  .venv/bin/python benchmarks/engine.py 1e6 [1e7 ...] [--dir /tmp/jl_bench] [--pandas]
  .venv/bin/python benchmarks/engine.py 1e8 --replicate-from 1e6     # 1e8 = the 1e6 log x ~100

Prints wall time, events/s and peak RSS (sampled every 0.2 s, process + children) for ingest and
build, the engine's seconds per table, and with --pandas the ratio to a straightforward pandas
`paths` table (sort + groupby list) over the engine's prepare + paths seconds.

Raw logs are cached under ``--dir`` (``raw_n<N>/events.parquet``): reruns skip generation.
``--replicate-from B`` builds the raw log by replicating the simulated log of size B K times
(K = round(N / B)) with distinct customer ids (suffix ``_r<k>``), streamed row group by row group
to Parquet (microsecond timestamps), so the big log is never held in memory.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
EVENTS_PER_CUSTOMER = 60.5   # measured on the default simulator (90 815 events / 1 500 customers)


from _measure import Peak  # noqa: E402  (shared with the other benchmarks)


def pandas_paths(path: Path):
    import pandas as pd
    e = pd.read_parquet(path, columns=["customer_id", "ts", "event_id", "touchpoint", "kind", "phase"])
    e = e[(e.kind == "touch") & e.phase.isin(["pre_purchase", "purchase"])]
    e = e.sort_values(["customer_id", "ts", "event_id"])
    p = e.groupby("customer_id", sort=False)["touchpoint"].agg(list)
    return p.map(" > ".join).value_counts()


def simulated_log(n_events: float, cache: Path) -> Path:
    """Raw simulator log of about n_events rows, cached at cache/raw_n<N>/events.parquet."""
    from conftest import make_project
    from journeylab import simulate
    out = cache / f"raw_n{int(n_events)}" / "events.parquet"
    if out.exists():
        return out
    n_cust = int(n_events / EVENTS_PER_CUSTOMER)
    work = cache / f"sim_n{int(n_events)}"
    params = make_project(work, **{"simulate.n_customers": n_cust})
    t = time.perf_counter()
    simulate.run_stage(params)
    print(f"simulate: {n_cust} customers in {time.perf_counter() - t:.1f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(work / "data/raw/events.parquet"), str(out))
    shutil.rmtree(work, ignore_errors=True)
    return out


def replicated_log(n_events: float, base_events: float, cache: Path) -> Path:
    """Raw log = the simulated base log replicated K = round(n/base) times, customer ids suffixed
    `_r<k>` (nulls stay null), written row group by row group with microsecond timestamps."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    base = simulated_log(base_events, cache)
    k_rep = max(1, round(n_events / base_events))
    out = cache / f"raw_n{int(n_events)}_rep{k_rep}x{int(base_events)}" / "events.parquet"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pf = pq.ParquetFile(str(base))
    schema = pf.schema_arrow
    fields = [pa.field(f.name, pa.timestamp("us", tz=f.type.tz)) if pa.types.is_timestamp(f.type) else f
              for f in schema]
    schema = pa.schema(fields)
    t = time.perf_counter()
    with pq.ParquetWriter(str(tmp), schema, compression="zstd") as w:
        for k in range(k_rep):
            suffix = f"_r{k}"
            for g in range(pf.num_row_groups):
                tb = pf.read_row_group(g)
                cid = tb.column("customer_id")
                tb = tb.set_column(tb.schema.get_field_index("customer_id"), "customer_id",
                                   pc.binary_join_element_wise(cid, pa.scalar(suffix), ""))
                w.write_table(tb.cast(schema))
    tmp.rename(out)
    print(f"replicate: {k_rep} x {base} -> {out} ({pq.ParquetFile(str(out)).metadata.num_rows:,} rows) "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    return out


def run_one(n_events: float, a) -> dict:
    from conftest import make_project
    from journeylab import engine, ingest
    cache = Path(a.dir)
    raw = (replicated_log(n_events, a.replicate_from, cache) if a.replicate_from and n_events > a.replicate_from
           else simulated_log(n_events, cache))
    work = cache / f"run_n{int(n_events)}"
    shutil.rmtree(work, ignore_errors=True)
    over = {"ingest.input": str(raw)}
    if a.memory_limit:
        over["backend.memory_limit"] = a.memory_limit
    params = make_project(work, **over)
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    with Peak() as pk:
        t = time.perf_counter()
        q = ingest.run_stage(params)
        t_ing = time.perf_counter() - t
        print(f"ingest: {t_ing:.1f} s (rows_read {q['rows_read']:,}, clean {q['rows_clean']:,}, "
              f"quarantined {q['rows_quarantined']:,}, duplicate {q['rows_duplicate']:,})", flush=True)
        t = time.perf_counter()
        m = engine.run_stage(params)
        t_eng = time.perf_counter() - t
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    n = m["events"]
    total = t_ing + t_eng
    res = {"events": n, "ingest_s": round(t_ing, 1), "build_s": round(t_eng, 1), "total_s": round(total, 1),
           "events_per_s": round(n / total), "peak_rss_gb": round(pk.peak / 2**30, 2),
           "seconds": m["seconds"], "load_before": load0, "load_after": load1}
    print(f"events {n:,}: ingest {t_ing:.1f} s, build {t_eng:.1f} s, total {total:.1f} s, "
          f"{n / total:,.0f} events/s, peak RSS {pk.peak / 2**30:.2f} GB", flush=True)
    print("engine seconds:", m["seconds"], flush=True)
    print(f"load average before {' '.join(load0)}, after {' '.join(load1)}", flush=True)
    if a.pandas:
        with Peak() as pk2:
            t = time.perf_counter()
            pandas_paths(engine.config.path(params, "data/clean/events.parquet"))
            t_pd = time.perf_counter() - t
        ours = m["seconds"]["paths"] + m["seconds"]["prepare"]
        res.update(pandas_paths_s=round(t_pd, 1), pandas_rss_gb=round(pk2.peak / 2**30, 2),
                   pandas_ratio=round(t_pd / ours, 2))
        print(f"pandas paths: {t_pd:.1f} s (peak RSS {pk2.peak / 2**30:.2f} GB); engine paths "
              f"{m['seconds']['paths']:.1f} s + shared prepare {m['seconds']['prepare']:.1f} s; "
              f"ratio pandas/(prepare+paths) = {t_pd / ours:.1f}x", flush=True)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("events", type=float, nargs="+")
    ap.add_argument("--dir", default="/tmp/jl_bench")
    ap.add_argument("--pandas", action="store_true")
    ap.add_argument("--replicate-from", type=float, default=None,
                    help="build logs larger than this by replicating the simulated log of this size")
    ap.add_argument("--memory-limit", default=None, help="override backend.memory_limit (e.g. 8GB)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (clean events, tables)")
    ap.add_argument("--generate-only", action="store_true")
    a = ap.parse_args()
    for n in a.events:
        if a.generate_only:
            (replicated_log(n, a.replicate_from, Path(a.dir)) if a.replicate_from and n > a.replicate_from
             else simulated_log(n, Path(a.dir)))
            continue
        res = run_one(n, a)
        print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
