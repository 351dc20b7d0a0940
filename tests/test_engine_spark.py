"""Every engine output on Spark equals DuckDB for the same small simulated log."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import make_project, run_stages

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    pytest.importorskip("pyspark", reason="pyspark not installed (pip install 'journeylab[spark]')")
    if shutil.which("java") is None:
        pytest.skip("Java not found: Spark needs a JRE (Java 17)")
    from journeylab import engine
    root = tmp_path_factory.mktemp("engine_spark")
    params = make_project(root, **{"simulate.n_customers": 80})
    run_stages(params, ("simulate", "ingest"))
    out = {}
    for name in ("duckdb", "spark"):
        p = {**params, "backend": {**params["backend"], "name": name, "spark_master": "local[2]",
                                        "spark_conf": {"spark.sql.shuffle.partitions": "2"}},
             "engine": {**params["engine"], "output_dir": f"data/journeys_{name}",
                        "metrics": f"metrics/engine_{name}.json"}}
        m = engine.run_stage(p)
        print(name, m["seconds"])
        out[name] = (m, {t: pd.read_parquet(root / f"data/journeys_{name}/{t}.parquet") for t in engine.TABLES})
    return out


def _norm(df: pd.DataFrame, keys) -> pd.DataFrame:
    df = df.copy()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.DatetimeTZDtype) or str(df[c].dtype).startswith("datetime64"):
            df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
        elif df[c].dtype == object and df[c].map(lambda v: isinstance(v, (bool, np.bool_)) or v is None).all():
            df[c] = df[c].astype("boolean")
    return df.sort_values(list(keys)).reset_index(drop=True)


@pytest.mark.parametrize("table", ["journeys", "paths", "transitions", "coalitions", "heuristics", "survival",
                                   "exposure", "customer_features", "funnel"])
def test_spark_equals_duckdb(both, table):
    from journeylab import engine
    (md, d), (ms, s) = both["duckdb"], both["spark"]
    assert md["backend"] == "duckdb" and ms["backend"] == "pyspark"
    assert md["rows"][table] == ms["rows"][table] > 0
    keys = engine._SORT_KEYS[table]
    a, b = _norm(d[table], keys), _norm(s[table], keys)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=False, rtol=1e-9, atol=1e-9)
