"""CLI plumbing: params loading, dotted overrides, user errors without tracebacks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from journeylab import cli
from journeylab.config import get, load_params
from journeylab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_dotted_overrides_are_yaml_typed(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"engine": {"lookback_days": 90}}))
    overrides = cli._key_values(["engine.lookback_days=30", "survival.horizons_days=[7, 14]", "a.b=true", "c=text"])
    assert cli._key_values(["date_from=2025-01-01", "f={since: 2024-02-01}"]) == {
        "date_from": "2025-01-01", "f": {"since": "2024-02-01"}}   # dates stay JSON-able strings (papermill)
    params = load_params(tmp_path / "params.yaml", overrides=overrides)
    assert params["engine"]["lookback_days"] == 30
    assert params["survival"]["horizons_days"] == [7, 14]
    assert params["a"]["b"] is True and params["c"] == "text"
    assert params["_root"] == str(tmp_path.resolve())


def test_get_missing_setting_names_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text("engine: {}\n")
    params = load_params(tmp_path / "params.yaml")
    assert get(params, "engine.lookback_days", 5) == 5
    with pytest.raises(ConfigError, match="engine.lookback_days"):
        get(params, "engine.lookback_days")


def test_missing_params_file_exits_2_without_traceback(tmp_path, capsys):
    code = cli.main(["--params", str(tmp_path / "nope.yaml"), "build"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope.yaml" in err and "not found" in err
    assert "Traceback" not in err


def test_bad_yaml_is_a_user_error(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("engine: [unclosed\n")
    assert cli.main(["--params", str(tmp_path / "params.yaml"), "build"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "journeylab.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("journeylab ")


def test_repository_params_cover_every_dvc_stage_section():
    """Each dvc.yaml stage's params exist in params.yaml (a typo would make DVC fail late)."""
    params = load_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        entries = stage.get("params", []) if "do" not in stage else stage["do"].get("params", [])
        for key in entries:
            key = key if isinstance(key, str) else next(iter(key))
            get(params, key)  # raises ConfigError naming the key


def test_simulator_truth_applies_only_to_the_simulators_own_output(tmp_path):
    from journeylab import config
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "truth.json").write_text("{}")
    base = {"simulate": {"output": "data/raw/events.parquet", "truth": "data/raw/truth.json"},
            "ingest": {"input": "data/raw/events.parquet"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    params = load_params(tmp_path / "params.yaml")
    assert config.simulated_input(params)
    assert config.truth_file(params) == tmp_path / "data" / "raw" / "truth.json"
    own = load_params(tmp_path / "params.yaml", overrides={"ingest.input": "data/raw/crm_export/*.csv"})
    assert not config.simulated_input(own) and config.truth_file(own) is None   # user data: no simulated truth
    (tmp_path / "data" / "raw" / "truth.json").unlink()
    assert config.truth_file(params) is None


def test_stage_summary_is_short_and_names_nested_sections():
    text = cli.stage_summary("survival", {"n_journeys": 120, "atc_naive_days": 36.0592, "fitting_path": "exact",
                                          "horizons": [7, 30], "p_convert": {"7": 0.05}, "cox": {"fin": -0.38}})
    assert text.splitlines() == ["journeylab survival: done", "  n_journeys: 120", "  atc_naive_days: 36.06",
                                 "  fitting_path: exact", "  horizons: 7, 30",
                                 "  (also: p_convert, cox; see the stage's metrics JSON)"]
