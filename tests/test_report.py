"""Report rendering: notebooks execute on small simulated data, HTML is safe to share, failures are loud."""
from __future__ import annotations

import base64
import importlib
import json
import os
import re
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from conftest import make_project
from journeylab import report
from journeylab.cli import STAGES, main as cli_main
from journeylab.errors import ConfigError

pytestmark = pytest.mark.xdist_group("reports")

# small and cheap: every analysis stage runs, the notebooks have real results to show
SMALL = {"simulate.n_customers": 400, "attribution.bootstrap_replicates": 20,
         "churn.train_cutoffs": ["2024-10-01", "2024-12-01"], "churn.gbm.max_iter": 60,
         "churn.calibration_folds": 2, "churn.importance_repeats": 1, "churn.pd_grid": 4,
         "churn.min_dissolutions": 20}


def _shared_dir(tmp_path_factory) -> Path:
    """One folder for the whole test run, shared by the xdist workers (built once under a file lock)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "journeylab_reports"


def _build_shared(shared: Path) -> None:
    """Small simulated project run through every stage, then `journeylab report --all` via the CLI."""
    params = make_project(shared / "project", **SMALL)
    failed = {}
    for stage in ("simulate", "ingest", "build", "survival", "churn", "attribute"):
        try:
            importlib.import_module(STAGES[stage][0]).run_stage(params)
        except Exception as exc:  # upstream in progress: the notebook must degrade, not crash
            if stage in ("simulate", "ingest", "build"):
                raise
            failed[stage] = f"{type(exc).__name__}: {exc}"
    rc = cli_main(["--params", str(shared / "project/params.yaml"), "report", "--all", "--as-of", "2025-06-30"])
    (shared / "done.json").write_text(json.dumps({"rc": rc, "failed_stages": failed}))


@pytest.fixture(scope="session")
def report_project(tmp_path_factory) -> dict:
    """Params of the shared small project (all stages run, reports rendered); ``_failed_stages`` noted."""
    from filelock import FileLock
    from journeylab.config import load_params
    shared = _shared_dir(tmp_path_factory)
    shared.mkdir(parents=True, exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        if not (shared / "done.json").exists():
            _build_shared(shared)
    done = json.loads((shared / "done.json").read_text())
    assert done["rc"] == 0, "journeylab report --all failed on the small project"
    params = load_params(shared / "project/params.yaml")
    params["_failed_stages"] = done["failed_stages"]
    return params


@pytest.fixture(scope="session")
def rendered_reports(report_project) -> Path:
    """reports/ of the shared project (rendered by `journeylab report --all`, in process)."""
    return Path(report_project["_root"]) / "reports"


# ----------------------------------------------------------------------------- full runs

def test_every_report_renders_and_is_safe(rendered_reports, report_project):
    names = report_project["report"]["notebooks"]
    for name in names:
        html = (rendered_reports / f"{name}.html").read_text(encoding="utf-8")
        assert report.check_html(html) == []
        assert not re.search(r"https?://", html)
        assert "Traceback" not in html and "Warning:" not in html
        assert "application/vnd.jupyter.stderr" not in html
        assert len(html.encode()) < 5 * 1024 * 1024
        assert "<script" not in html.lower() and "<link" not in html.lower()
        # header: period, row counts, parameters, version + revision; then a summary with numbers
        assert "Data period:</strong> 2024-01-01 to 2025-06-30" in html
        dq = json.loads((Path(report_project["_root"]) / "metrics/data_quality.json").read_text())
        assert f"{dq['rows_read']:,} rows read" in html
        assert "Key parameters:" in html and "journeylab</strong> 0.1.0 · revision unknown" in html
        assert "Executive summary" in html and 'class="jl-summary"' in html
        # no code shown
        assert "report.start(" not in html and "import " not in html
    overview = (rendered_reports / "journey_overview.html").read_text(encoding="utf-8")
    assert overview.count("data:image/png;base64,") >= 5  # volumes, reach, funnel, NPS, CSAT, ratings, Pareto
    for section in ("Data quality and row accounting", "Stage funnel", "NPS", "CSAT", "Revenue concentration",
                    "positive", "top 20%"):
        assert section in overview
    index = (rendered_reports / "index.html").read_text(encoding="utf-8")
    for name in names:
        assert f'href="{name}.html"' in index
    assert "2025-06-30" in index and not re.search(r"https?://", index)


def test_failed_upstream_stages_degrade_to_one_line(rendered_reports, report_project):
    stage_report = {"survival": "time_to_conversion", "churn": "churn", "attribute": "attribution"}
    for stage, why in report_project["_failed_stages"].items():
        html = (rendered_reports / f"{stage_report[stage]}.html").read_text(encoding="utf-8")
        assert "not available" in html, f"{stage} failed ({why}) but its report does not say so"


def test_no_customer_identifier_in_any_report(rendered_reports, report_project):
    root = Path(report_project["_root"])
    ids = set(pd.read_parquet(root / "data/clean/events.parquet", columns=["customer_id"])["customer_id"].astype(str))
    raw = pd.read_parquet(root / "data/raw/events.parquet", columns=["customer_id"])["customer_id"].dropna().astype(str)
    ids |= {i for i in raw if len(i) >= 4}
    assert len(ids) > 300
    for html_file in rendered_reports.glob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        hits = [i for i in ids if i in text]
        assert hits == [], f"{html_file.name} contains customer ids {hits[:5]}"


def test_overview_numbers_match_library(report_project, rendered_reports):
    """The summary shows the library's numbers (customers, NPS), formatted as the report formats them."""
    from journeylab import overview
    ev = overview.load_events(report_project)
    tot = overview.totals(ev)
    nps = overview.survey_scores(ev, "nps").iloc[-1]
    html = (rendered_reports / "journey_overview.html").read_text(encoding="utf-8")
    assert f"we observed {tot['customers']:,} customers" in html
    assert f"Overall NPS is {report.fmt_num(nps['nps'], 0)}" in html


# ----------------------------------------------------------------------------- failures

def _write_nb(path: Path, cells) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def test_failing_cell_exits_nonzero_without_html(project_factory, capsys):
    params = project_factory()
    root = Path(params["_root"])
    params_cell = new_code_cell("params_path = None\nas_of = None\ndivisor = 1")
    params_cell.metadata["tags"] = ["parameters"]
    _write_nb(root / "notebooks/broken.ipynb", [
        params_cell, new_markdown_cell("# Broken"), new_code_cell("x = 1"),
        new_code_cell("y = 10 / divisor"), new_code_cell("print('after')")])
    stale = root / "reports/broken.html"
    stale.write_text("<html>old</html>")
    rc = cli_main(["--params", str(root / "params.yaml"), "report", "broken", "--param", "divisor=0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "broken" in err and "code cell 3" in err and "ZeroDivisionError" in err and "y = 10 / divisor" in err
    assert "Traceback" not in err
    assert not stale.exists()  # the previous run's HTML must not look like this run's result
    kept = root / "reports/_failed/broken.ipynb"
    assert kept.exists() and "ZeroDivisionError" in kept.read_text()
    # the same notebook with a YAML-typed parameter that works renders
    rc = cli_main(["--params", str(root / "params.yaml"), "report", "broken", "--param", "divisor=2"])
    assert rc == 0 and stale.exists() and not kept.exists()


def test_unknown_parameter_is_refused(project_factory):
    params = project_factory()
    with pytest.raises(ConfigError, match="unknown parameter"):
        report.render(params, "journey_overview", parameters={"no_such_thing": 1})


# ----------------------------------------------------------------------------- HTML unit checks

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 20).decode()


def _executed_notebook():
    code = new_code_cell("print('hi')\nsecret_code_line = 1")
    code.outputs = [new_output("stream", name="stderr", text="UserWarning: something\n"),
                    new_output("display_data", data={"text/markdown": "Result **42** days"}),
                    new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure size 640x480>"}),
                    new_output("execute_result", data={"text/plain": "<Axes: >"}, execution_count=1)]
    params = new_code_cell("params_path = None")
    params.metadata["tags"] = ["parameters"]
    link = new_markdown_cell("See [the docs](https://example.com/docs) for more.")
    return new_notebook(cells=[params, code, link])


def test_notebook_to_html_strips_code_stderr_and_urls():
    meta = {"name": "t", "title": "T", "as_of": "2025-01-31", "generated": "now", "version": "0", "revision": "abc"}
    html = report.notebook_to_html(_executed_notebook(), meta)
    assert "Result <strong>42</strong> days" in html
    assert f"data:image/png;base64,{PNG}" in html
    assert "secret_code_line" not in html and "params_path" not in html
    assert "UserWarning" not in html and "&lt;Axes" not in html and "Figure size" not in html
    assert "example.com" not in html and "the docs" in html
    assert report.check_html(html) == []


def test_check_html_flags_problems():
    assert report.check_html("<p>ok</p>") == []
    assert any("external URL" in p for p in report.check_html('<img src="http://x/y.png">'))
    assert any("Traceback" in p for p in report.check_html("Traceback (most recent call last):"))
    assert any("warning" in p for p in report.check_html("FutureWarning: x"))
    assert any("5 MB" in p for p in report.check_html("x" * (5 * 1024 * 1024 + 1)))


def test_index_lists_reports_with_dates(tmp_path):
    for name, date in (("churn", "2025-05-31"), ("journey_overview", "2025-06-30")):
        meta = {"name": name, "title": report.TITLES[name], "as_of": date, "generated": "g", "version": "0", "revision": "r"}
        (tmp_path / f"{name}.html").write_text(report.notebook_to_html(new_notebook(cells=[]), meta))
    (tmp_path / "notes.html").write_text("<html>not a report</html>")
    text = report.write_index(tmp_path).read_text()
    assert text.index("journey_overview.html") < text.index("churn.html")  # report order
    assert "2025-05-31" in text and "2025-06-30" in text and "notes.html" not in text


def test_git_revision_and_report_date(tmp_path):
    assert report.git_revision(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "m"], cwd=tmp_path, check=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert report.git_revision(tmp_path) == rev
    params = {"window": {"end": "2025-07-01"}, "report": {"as_of": None}}
    assert report.report_date(params) == "2025-06-30"
    assert report.report_date(params, "2025-03-02") == "2025-03-02"
    with pytest.raises(ConfigError):
        report.report_date(params, "yesterday")


def test_overview_segment_and_date_filter(report_project, tmp_path):
    """A filtered overview (segment + date range) renders and counts only the matching customers."""
    from journeylab import overview
    ev = overview.load_events(report_project)
    seg = ev.filter(ev.segment.notnull()).segment.value_counts().to_pandas().sort_values("segment_count").iloc[-1, 0]
    sub = overview.filter_events(ev, date_from="2024-06-01", as_of="2025-03-31", where={"segment": seg})
    n_expected = overview.totals(sub)["customers"]
    assert 0 < n_expected < overview.totals(ev)["customers"]
    out = report.render(report_project, "journey_overview", as_of="2025-03-31", out_dir=tmp_path,
                        parameters={"date_from": "2024-06-01", "segment_filter": {"segment": seg}})
    text = out.read_text()
    assert "Filtered view" in text and f"segment = {seg}" in text
    assert f"{n_expected:,} customers" in text
