"""Shared fixtures: temporary projects with simulated data run through the pipeline stages.

* ``make_project(tmp_path, **overrides)``: copy params.yaml into a temp project root with
  overrides (dotted keys) and return the params dict (paths resolve inside the temp root).
* ``small_project``: session-scoped, small simulation (n_customers=1500) run through
  simulate -> ingest -> build. Fast; use it for smoke/integration tests.
* ``default_project``: session-scoped, the default params.yaml size run through
  simulate -> ingest -> build. Use it for ground-truth tests and mark them
  ``@pytest.mark.xdist_group("default_data")`` so one worker builds it once.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from journeylab.config import load_params, set_dotted

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def make_project(root: Path, **overrides) -> dict:
    """Write params.yaml (repository defaults + dotted overrides) into ``root``; return loaded params."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(params, key.replace("__", "."), value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for sub in ("data/raw", "data/clean", "data/journeys", "data/results", "metrics", "reports"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return load_params(root / "params.yaml")


def run_stages(params: dict, stages=("simulate", "ingest", "build")) -> dict:
    import importlib
    from journeylab.cli import STAGES
    for stage in stages:
        importlib.import_module(STAGES[stage][0]).run_stage(params)
    return params


@pytest.fixture(scope="session")
def small_project(tmp_path_factory) -> dict:
    params = make_project(tmp_path_factory.mktemp("small_project"), **{"simulate.n_customers": 1500})
    return run_stages(params)


@pytest.fixture(scope="session")
def default_project(tmp_path_factory) -> dict:
    params = make_project(tmp_path_factory.mktemp("default_project"))
    return run_stages(params)


@pytest.fixture
def project_factory(tmp_path):
    """``project_factory(**overrides)`` -> params of a fresh temp project (nothing run yet)."""
    counter = {"n": 0}

    def factory(**overrides):
        counter["n"] += 1
        return make_project(tmp_path / f"p{counter['n']}", **overrides)
    return factory
