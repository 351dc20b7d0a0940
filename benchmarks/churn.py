"""Churn benchmark: customer_features + churn training + out-of-time evaluation for N customers.

Usage: .venv/bin/python benchmarks/churn.py --customers 1000000                 # 1e6 simulated customers
       .venv/bin/python benchmarks/churn.py --customers 1000000 --generate-only # data only (cached)
       .venv/bin/python benchmarks/churn.py --customers 1000000 --base 100000   # 10 replicas of 1e5 (quicker data)

Data (not timed, cached in --dir so reruns skip it): ``--base`` customers (default: all N) are
simulated (``simulate.run_stage``) and ingested (``ingest.run_stage``); 1e6 takes ~5.5 min on
this machine (simulate ~190 s, ingest ~130 s). For N > base the clean events are replicated
K = N / base times with distinct customer ids (suffix ``_r{k}``) and distinct event_ids
(``event_id + k * (max + 1)``), streamed to one Parquet file (microsecond UTC timestamps);
truth.json / truth_churn.parquet are replicated the same way. Replicas are exact copies under new
ids, so customer-grouped splits (calibration folds, early stopping) see the same histories on both
sides: the GBM's early stopping then never triggers and the timing is pessimistic. Simulated
customers (the default) are what the figures in benchmarks/README.md use.

Timed (wall clock; peak RSS of this process sampled every 0.2 s in a thread, DuckDB included):
* features: ``engine.prepare`` (materialise journey events, touches, customer attributes, as
  ``engine.run_stage`` does) + ``engine.customer_features`` written to data/journeys/customer_features.parquet;
* churn: ``churn.run_stage`` (its ``timings_s`` laps are grouped into training = load + BG/NBD at
  every cutoff + calibrated logistic / gradient boosting fits + Cox survival fit, evaluation =
  out-of-time metrics/tables + explanations, scoring = lifecycle, truth comparison, scores file).
Prints the figures and `uptime` (load average) before and after.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _measure import Peak, uptime  # noqa: E402  (shared with the other benchmarks)


def base_project(root: Path, n: int) -> dict:
    """Simulate + ingest ``n`` customers once (cached)."""
    from conftest import make_project
    from journeylab import ingest, simulate
    proj = root / f"base_{n}"
    params = make_project(proj, **{"simulate.n_customers": n, "simulate.chunk_customers": 20000})
    done = proj / "done_generate"
    if not done.exists():
        t = time.perf_counter()
        simulate.run_stage(params)
        t1 = time.perf_counter()
        ingest.run_stage(params)
        print(f"[generate] simulate {n:,} customers {t1 - t:.0f} s, ingest {time.perf_counter() - t1:.0f} s "
              "(not part of the benchmark)", flush=True)
        done.touch()
    return params


def replicated_project(root: Path, base: dict, n: int, k: int) -> dict:
    """K copies of the base clean events with distinct customer ids / event_ids (cached)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from conftest import make_project

    proj = root / f"n_{n}"
    params = make_project(proj, **{"simulate.n_customers": n})
    done = proj / "done_replicate"
    if done.exists():
        return params
    t = time.perf_counter()
    broot = Path(base["_root"])
    src = pq.ParquetFile(broot / "data/clean/events.parquet")
    max_id = pq.read_table(broot / "data/clean/events.parquet", columns=["event_id"])["event_id"]
    offset = int(pc.max(max_id).as_py()) + 1
    out = proj / "data/clean/events.parquet"
    writer = None
    rows = 0
    for rep in range(k):
        for g in range(src.num_row_groups):
            tb = src.read_row_group(g)
            i = tb.schema.get_field_index("customer_id")
            tb = tb.set_column(i, "customer_id", pc.binary_join_element_wise(
                tb["customer_id"].cast(pa.string()), pa.scalar(f"_r{rep}"), ""))
            j = tb.schema.get_field_index("event_id")
            tb = tb.set_column(j, "event_id", pc.add(tb["event_id"], pa.scalar(rep * offset, pa.int64())))
            if writer is None:
                writer = pq.ParquetWriter(out, tb.schema, coerce_timestamps="us")
            writer.write_table(tb)
            rows += tb.num_rows
    writer.close()
    # ground truth: same churn section (oracle figures are those of the base log), replicated true risks
    truth = json.loads((broot / "data/raw/truth.json").read_text())
    (proj / "data/raw/truth.json").write_text(json.dumps({"churn": truth.get("churn"), "counts": truth.get("counts"),
                                                          "replicated": {"base_customers": base["simulate"]["n_customers"],
                                                                         "copies": k}}))
    tc = pq.read_table(broot / "data/raw/truth_churn.parquet")
    parts = []
    for rep in range(k):
        i = tc.schema.get_field_index("customer_id")
        parts.append(tc.set_column(i, "customer_id", pc.binary_join_element_wise(
            tc["customer_id"].cast(pa.string()), pa.scalar(f"_r{rep}"), "")))
    pq.write_table(pa.concat_tables(parts), proj / "data/raw/truth_churn.parquet", coerce_timestamps="us")
    del np
    print(f"[generate] replicated {k} x base -> {rows:,} events in {time.perf_counter() - t:.0f} s "
          "(not part of the benchmark)", flush=True)
    done.touch()
    return params


def revision() -> str:
    """git HEAD, with '+dirty' when engine.py or churn.py have uncommitted changes (others edit the same checkout)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "src/journeylab/engine.py", "src/journeylab/churn.py"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def time_features(params: dict, with_prepare: bool = False) -> dict:
    """customer_features -> Parquet straight from the clean events (the table reads the events
    directly; touchpoints and customer attributes are found inside). ``with_prepare``: first
    materialise engine.prepare's shared journey tables as engine.run_stage does for all nine
    tables (not needed by this one; reported separately as prepare_s)."""
    from journeylab import config, engine
    con = engine.connect(params)
    events = engine.load_events(con, config.path(params, "data/clean/events.parquet"))
    opts = engine.options_from_params(params)
    t0 = time.perf_counter()
    if with_prepare:
        opts = engine.prepare(con, events, opts, materialise=True)
        events = opts.get("events_all", events)
    t1 = time.perf_counter()
    expr = engine.customer_features(events, **{**opts, "events_all": events})
    out = config.path(params, "data/journeys/customer_features.parquet")
    rows = engine._write(con, expr, out, engine._SORT_KEYS["customer_features"])
    t2 = time.perf_counter()
    n_events = int(events.count().to_pyarrow().as_py())
    try:
        con.disconnect()
    except Exception:
        pass
    return {"prepare_s": t1 - t0, "customer_features_s": t2 - t1, "features_s": t2 - t0, "rows": rows,
            "event_rows": n_events}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=float, default=1e6)
    ap.add_argument("--base", type=float, default=None,
                    help="simulated customers (default: all of --customers; fewer = the rest are replicas)")
    ap.add_argument("--dir", default="/tmp/jl_bench_churn")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--skip-features", action="store_true",
                    help="reuse the cached customer_features.parquet (and its timing from the run that built it)")
    ap.add_argument("--features-only", action="store_true")
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory limit (backend.memory_limit, params: 8GB)")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (backend.threads)")
    ap.add_argument("--churn-threads", type=int, default=None, help="churn.n_threads (default: params, 1)")
    a = ap.parse_args()
    n = int(a.customers)
    nb = int(a.base) if a.base else n
    if n < nb:
        nb = n
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    base = base_project(root, nb)
    if n == nb:
        params = base
    else:
        if n % nb:
            raise SystemExit("--customers must be a multiple of --base")
        params = replicated_project(root, base, n, n // nb)
    if a.generate_only:
        return
    from journeylab import churn
    from journeylab.config import set_dotted
    set_dotted(params, "backend.threads", a.threads)
    if a.memory_limit:
        set_dotted(params, "backend.memory_limit", a.memory_limit)
    if a.churn_threads:
        set_dotted(params, "churn.n_threads", a.churn_threads)
    rev = revision()
    print("load before:", uptime(), "| revision", rev, flush=True)
    fig: dict = {"customers": n, "base_customers": nb, "copies": n // nb, "revision": rev}
    cache = Path(params["_root"]) / "features_timing.json"
    if a.skip_features and cache.exists():
        f = json.loads(cache.read_text())
        f["note"] = "customer_features.parquet reused; timing from the run that built it"
        pk_f_gb = f.get("peak_rss_gb", 0.0)
    else:
        with Peak() as pk_f:
            f = time_features(params)
        pk_f_gb = pk_f.peak / 2**30
        f.update(peak_rss_gb=pk_f_gb, load_after=uptime(), revision=rev)
        cache.write_text(json.dumps(f, indent=2))
    fig.update(features=f, features_peak_rss_gb=pk_f_gb)
    print("features:", json.dumps(f), flush=True)
    print("load after features:", uptime(), flush=True)
    if a.features_only:
        return
    with Peak() as pk_c:
        t = time.perf_counter()
        m = churn.run_stage(params)
        t_churn = time.perf_counter() - t
    lap = m["timings_s"]
    train_keys = [k for k in lap if k.startswith(("load", "bgnbd", "fit", "survival"))]
    eval_keys = [k for k in lap if k.startswith(("evaluate", "explain"))]
    score_keys = [k for k in lap if k not in train_keys + eval_keys]
    tr, ev, sc = (sum(lap[k] for k in ks) for ks in (train_keys, eval_keys, score_keys))
    fs = f.get("features_s") or 0.0
    fig.update(churn_s=t_churn, training_s=tr, evaluation_s=ev, scoring_s=sc, laps=lap,
               total_s=fs + t_churn, churn_peak_rss_gb=pk_c.peak / 2**30,
               peak_rss_gb=max(pk_f_gb, pk_c.peak / 2**30))
    by_cut = m["train"]["by_cutoff"]
    print(f"customers {n:,} ({n // nb} x {nb:,} simulated); customer_features rows {f.get('rows')}", flush=True)
    print("rows per cutoff (features / active / labelled):",
          [(c["cutoff"], c["customers"], c["active"], c["n"]) for c in by_cut], "eval", (m["eval"]["customers"], m["eval"]["n"]),
          "score", (m.get("scored") or {}).get("n"), flush=True)
    print(f"train rows {m['train']['n']:,} (sampled {m['train'].get('sampled_rows', m['train']['n']):,}); "
          f"survival rows {m['survival'].get('n_train')}; explanations {m.get('explanations', {})}", flush=True)
    print(f"features {fs:.1f} s | training {tr:.1f} s | evaluation {ev:.1f} s | scoring+output {sc:.1f} s | "
          f"churn.run_stage {t_churn:.1f} s | TOTAL {fig['total_s']:.1f} s | peak RSS {fig['peak_rss_gb']:.2f} GB", flush=True)
    print("churn laps (s):", lap, flush=True)
    q = {k: m["models"][k].get("roc_auc") for k in m["models"]}
    print("ROC-AUC:", q, "oracle_auc_eval:", m.get("oracle_auc_eval"), "gbm ECE:", m["models"]["gbm"].get("ece"),
          "C-index eval:", m["survival"].get("c_index_eval"), "drivers:",
          [d["driver"] for d in (m.get("top_drivers") or [])], "truth in top:", m.get("truth_drivers_in_top"), flush=True)
    print("load after:", uptime(), flush=True)
    fig["quality"] = {"roc_auc": q, "oracle_auc_eval": m.get("oracle_auc_eval"), "gbm_ece": m["models"]["gbm"].get("ece"),
                      "c_index_eval": m["survival"].get("c_index_eval")}
    (root / f"figures_{n}.json").write_text(json.dumps(fig, indent=2, default=str))


if __name__ == "__main__":
    main()
