"""Report notebooks -> shareable HTML.

``main`` executes ``notebooks/<name>.ipynb`` with papermill (kernel ``python3``, working
directory the project root) and renders it in the same process with nbconvert: no code, no
stderr, figures embedded as PNG, no external URLs, one self-contained file.

Notebooks call :func:`start` (parameters, plot style, header) and the display helpers
(:func:`md`, :func:`table`, :func:`figure`, :func:`unavailable`); every number they show comes
from library functions (``overview``, and the loaders/summaries at the end of this module).
"""
from __future__ import annotations

import datetime as dt
import html as html_lib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import __version__
from .config import get, load_params, path as project_path, root as project_root
from .errors import ConfigError, JourneylabError

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_HTML_BYTES = 5 * 1024 * 1024
KERNEL = "python3"

TITLES = {
    "journey_overview": "Customer journey overview",
    "time_to_conversion": "Time to conversion",
    "churn": "Churn and dissolution risk",
    "attribution": "Touchpoint attribution",
}
# Parameters shown in each report's header (dotted params.yaml keys).
KEY_PARAMS = {
    "journey_overview": ["ingest.unknown_touchpoint", "engine.lookback_days", "engine.study_start"],
    "time_to_conversion": ["survival.journey_type", "survival.horizons_days", "engine.study_start",
                           "engine.lost_inactivity_days", "survival.holdout_start"],
    "churn": ["churn.horizon_days", "churn.inactivity_days", "churn.eval_cutoff", "churn.train_cutoffs"],
    "attribution": ["attribution.journey_type", "engine.lookback_days", "attribution.markov_orders",
                    "attribution.bootstrap_replicates"],
}
_URL = re.compile(r"https?://", re.IGNORECASE)


class ReportError(JourneylabError):
    """A report notebook failed or its HTML is not safe to share."""


# ----------------------------------------------------------------------------- running

def main(params: dict, name: str | None = None, run_all: bool = False, parameters: dict | None = None,
         as_of: str | None = None, out_dir: str | None = None) -> int:
    """CLI entry: render one report (or ``--all`` plus ``index.html``); returns the exit code."""
    names = list(get(params, "report.notebooks", list(TITLES))) if run_all else [name]
    if name == "index" and not run_all:
        print(write_index(_out_dir(params, out_dir)))
        return 0
    for n in names:
        out = render(params, n, parameters=parameters, as_of=as_of, out_dir=out_dir)
        print(out)
    if run_all:
        print(write_index(_out_dir(params, out_dir)))
    return 0


def _out_dir(params: dict, out_dir: str | os.PathLike | None) -> Path:
    d = Path(out_dir) if out_dir else project_path(params, get(params, "report.output_dir", "reports"))
    if not d.is_absolute():
        d = Path.cwd() / d
    d.mkdir(parents=True, exist_ok=True)
    return d


def notebook_path(params: dict, name: str) -> Path:
    """``<root>/notebooks/<name>.ipynb``, else the kit's own copy (temp projects, installed kit)."""
    rel = get(params, "report.notebooks_dir", "notebooks")
    for base in (project_path(params, rel), Path(__file__).resolve().parents[2] / "notebooks"):
        p = base / f"{name}.ipynb"
        if p.exists():
            return p
    known = ", ".join(get(params, "report.notebooks", list(TITLES)))
    raise ReportError(f"report '{name}': notebook {project_path(params, rel) / (name + '.ipynb')} not found. "
                      f"Known reports: {known}.")


def report_date(params: dict, as_of: str | None = None) -> str:
    """Report date: ``--as-of``, else params ``report.as_of``, else the window end (exclusive) minus one day."""
    value = as_of or get(params, "report.as_of", None)
    if value:
        try:
            return dt.date.fromisoformat(str(value)[:10]).isoformat()
        except ValueError:
            raise ConfigError(f"report date '{value}' is not a date; use YYYY-MM-DD (e.g. --as-of 2025-06-30).") from None
    end = get(params, "window.end", None)
    if end:
        return (dt.date.fromisoformat(str(end)[:10]) - dt.timedelta(days=1)).isoformat()
    return dt.date.today().isoformat()


def render(params: dict, name: str, parameters: dict | None = None, as_of: str | None = None,
           out_dir: str | os.PathLike | None = None) -> Path:
    """Execute notebook ``name`` and write ``<out_dir>/<name>.html``; raise ReportError on failure."""
    import nbformat
    import papermill as pm

    src = notebook_path(params, name)
    out = _out_dir(params, out_dir)
    target = out / f"{name}.html"
    failed_nb = out / "_failed" / f"{name}.ipynb"
    declared = pm.inspect_notebook(str(src))
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise ConfigError(f"report {name}: unknown parameter(s) {', '.join(unknown)}. "
                          f"This notebook accepts: {', '.join(sorted(declared))}.")
    date = report_date(params, as_of)
    root = project_root(params)
    with tempfile.TemporaryDirectory(prefix="journeylab-report-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        clean = {k: v for k, v in params.items()}
        clean["_root"] = str(root.resolve())
        params_file.write_text(yaml.safe_dump(clean, sort_keys=False), encoding="utf-8")
        run_params = dict(parameters or {})
        run_params.update(params_path=str(params_file), as_of=date)
        executed = Path(tmp) / f"{name}.ipynb"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pm.execute_notebook(str(src), str(executed), parameters=run_params, kernel_name=KERNEL,
                                    cwd=str(root), progress_bar=False, log_output=False,
                                    request_save_on_cell_execute=False)
        except pm.PapermillExecutionError as exc:
            _fail(target, executed, failed_nb)
            raise ReportError(_failure_message(name, exc, executed, failed_nb)) from None
        except Exception as exc:  # kernel died, missing kernelspec, ...
            _fail(target, executed, failed_nb)
            raise ReportError(f"report {name}: the notebook could not be run ({type(exc).__name__}: {exc}). "
                              f"Check that the Jupyter kernel '{KERNEL}' exists "
                              f"(python -m ipykernel install --sys-prefix --name {KERNEL}).") from None
        nb = nbformat.read(str(executed), as_version=4)
    meta = {"name": name, "title": TITLES.get(name, name.replace("_", " ").capitalize()), "as_of": date,
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "version": __version__, "revision": git_revision(root)}
    html = notebook_to_html(nb, meta)
    problems = check_html(html)
    if problems:
        failed_nb.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(failed_nb))
        target.unlink(missing_ok=True)
        raise ReportError(f"report {name}: the rendered HTML is not safe to share ({'; '.join(problems)}). "
                          f"Nothing was written; the executed notebook is in {failed_nb}.")
    tmp_target = target.with_suffix(".html.tmp")
    tmp_target.write_text(html, encoding="utf-8")
    os.replace(tmp_target, target)
    if failed_nb.exists():
        failed_nb.unlink()
    return target


def _fail(target: Path, executed: Path, failed_nb: Path) -> None:
    target.unlink(missing_ok=True)  # never leave an older HTML looking like this run's result
    failed_nb.parent.mkdir(parents=True, exist_ok=True)
    if executed.exists():
        shutil.copyfile(executed, failed_nb)


def _failure_message(name: str, exc: Any, executed: Path, failed_nb: Path) -> str:
    cell_no, first_line = exc.exec_count, ""
    try:
        import nbformat
        nb = nbformat.read(str(executed), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        for i, c in enumerate(code, start=1):
            if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                cell_no, first_line = i, (c.source.strip().splitlines() or [""])[0][:80]
                break
    except Exception:  # the message must not fail
        pass
    where = f"code cell {cell_no}" + (f" ({first_line})" if first_line else "")
    return (f"report {name}: {where} failed with {exc.ename}: {str(exc.evalue).strip()[:400]}. "
            f"No HTML was written; the executed notebook is kept in {failed_nb} for debugging.")


def git_revision(root: str | os.PathLike) -> str:
    """Short git revision of the project (``-dirty`` when it has uncommitted changes), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        return rev.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------- HTML

def clean_notebook(nb: Any) -> Any:
    """Drop what recipients must not see: parameter cells, stderr, errors, object reprs, empty cells."""
    keep = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & {"parameters", "injected-parameters", "remove", "remove_cell"}:
            continue
        if cell.cell_type == "code":
            outs = []
            for o in cell.get("outputs", []):
                kind = o.get("output_type")
                if kind == "stream" and o.get("name") != "stdout":
                    continue
                if kind == "error":
                    continue
                if kind in ("execute_result", "display_data"):
                    data = o.get("data", {})
                    data.pop("application/vnd.jupyter.widget-view+json", None)
                    text = str(data.get("text/plain", "")).strip()
                    if set(data) <= {"text/plain"} and text.startswith("<") and text.endswith(">"):
                        continue  # "<Figure size ...>", "<Axes: ...>"
                    if not data:
                        continue
                if kind == "stream" and not str(o.get("text", "")).strip():
                    continue
                outs.append(o)
            cell.outputs = outs
            if not outs:
                continue
        if cell.cell_type == "raw":
            continue
        keep.append(cell)
    nb.cells = keep
    nb.metadata.pop("widgets", None)
    return nb


def notebook_to_html(nb: Any, meta: dict) -> str:
    """Render an executed notebook to one self-contained HTML page (no input cells, no scripts)."""
    from nbconvert import HTMLExporter

    nb = clean_notebook(nb)
    exporter = HTMLExporter(template_name="lab", extra_template_paths=[str(TEMPLATES)],
                            template_file="journeylab.html.j2", exclude_input=True,
                            exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True)
    resources = {
        "journeylab_css": (TEMPLATES / "journeylab.css").read_text(encoding="utf-8"),
        "journeylab_title": f"{meta['title']} · {meta['as_of']}",
        "journeylab_meta": json.dumps(meta, sort_keys=True),
        "journeylab_footer": (f"journeylab {meta['version']} · revision {meta['revision']} · "
                              f"report date {meta['as_of']} · generated {meta['generated']}"),
        "metadata": {"name": meta["name"]},
    }
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return strip_external_urls(body)


def strip_external_urls(html: str) -> str:
    """Remove links/sources pointing outside the file (keep their text); nothing is fetched offline."""
    html = re.sub(r'\s(href|src)="https?://[^"]*"', "", html, flags=re.IGNORECASE)
    html = re.sub(r'<link\b[^>]*>', "", html, flags=re.IGNORECASE)
    html = re.sub(r'<script\b[^>]*\bsrc=[^>]*>\s*</script>', "", html, flags=re.IGNORECASE)
    return html


def check_html(html: str) -> list[str]:
    """Problems that make a rendered report unfit to share (empty list when fine)."""
    problems = []
    if _URL.search(html):
        problems.append(f"external URL '{_URL.search(html).group(0)}...' found")
    size = len(html.encode("utf-8"))
    if size > MAX_HTML_BYTES:
        problems.append(f"{size / 1e6:.1f} MB, above the 5 MB limit (reduce figure count/size)")
    for marker in ("Traceback (most recent call last)", 'data-mime-type="application/vnd.jupyter.stderr"'):
        if marker in html:
            problems.append(f"'{marker}' in the output")
    if re.search(r"\b\w*Warning:", html):
        problems.append("a Python warning is printed in the output")
    if "<script" in html.lower():
        problems.append("a script element is present")
    return problems


def write_index(out_dir: str | os.PathLike) -> Path:
    """Write ``index.html`` linking every report in ``out_dir`` with its report date."""
    out = Path(out_dir)
    rows = []
    for f in sorted(out.glob("*.html")):
        if f.name == "index.html":
            continue
        m = re.search(r'<meta name="journeylab-report" content="([^"]*)"', f.read_text(encoding="utf-8"))
        if not m:
            continue
        meta = json.loads(html_lib.unescape(m.group(1)))
        rows.append((f.name, meta))
    order = {n: i for i, n in enumerate(TITLES)}
    rows.sort(key=lambda r: (order.get(r[1].get("name"), 99), r[0]))
    items = "\n".join(
        f'<tr><td><a href="{html_lib.escape(fname)}">{html_lib.escape(m.get("title", fname))}</a></td>'
        f'<td>{html_lib.escape(m.get("as_of", ""))}</td><td>{html_lib.escape(m.get("generated", ""))}</td>'
        f'<td>{html_lib.escape(str(m.get("revision", "")))}</td></tr>'
        for fname, m in rows) or '<tr><td colspan="4">No reports rendered yet.</td></tr>'
    css = (TEMPLATES / "journeylab.css").read_text(encoding="utf-8")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8" /><meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>journeylab reports</title><style type="text/css">{css}</style></head>
<body class="jl-body"><main class="jl-report">
<h1>journeylab reports</h1>
<p>Each report is a single file that opens offline. The report date is the last day of data it describes.</p>
<table><thead><tr><th>Report</th><th>Report date</th><th>Generated</th><th>Revision</th></tr></thead>
<tbody>
{items}
</tbody></table>
<footer class="jl-footer">journeylab {html_lib.escape(__version__)}</footer>
</main></body></html>
"""
    target = out / "index.html"
    target.write_text(page, encoding="utf-8")
    return target


# ----------------------------------------------------------------------------- notebook side

def start(name: str, params_path: str | None = None, as_of: str | None = None, show_header: bool = True,
          **parameters: Any) -> dict:
    """Notebook set-up: load params, quiet warnings, apply the plot style, show the header; return params."""
    import logging

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for noisy in ("py4j", "pyspark", "matplotlib", "numexpr", "ibis"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    params = load_params(params_path) if params_path else load_params()
    params.setdefault("report", {})["as_of"] = report_date(params, as_of)
    params["_report"] = {"name": name, "parameters": {k: v for k, v in parameters.items()}}
    from . import plots
    plots.set_style(params)
    if show_header:
        md(header(params, name, params["report"]["as_of"], parameters))
    return params


def _fmt_param(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return "none" if v is None else str(v)


def fmt_int(n: Any) -> str:
    """1234567 -> '1,234,567'; None -> 'n/a'."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    return f"{int(round(float(n))):,}"


def fmt_num(x: Any, digits: int = 1) -> str:
    """Number with fixed decimals; None/NaN -> 'n/a'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{float(x):,.{digits}f}"


def fmt_pct(x: Any, digits: int = 0) -> str:
    """0.257 -> '26%'; None/NaN -> 'n/a'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * float(x):.{digits}f}%"


def header(params: dict, name: str, as_of: str | None = None, parameters: dict | None = None) -> str:
    """Markdown header: title, data period, row counts, key parameters, version and git revision."""
    title = TITLES.get(name, name.replace("_", " ").capitalize())
    dq = load_metrics(params, "data_quality") or {}
    start_, end = get(params, "window.start", "?"), get(params, "window.end", "?")
    end_incl = end
    try:
        end_incl = (dt.date.fromisoformat(str(end)[:10]) - dt.timedelta(days=1)).isoformat()
    except ValueError:
        pass
    observed = ""
    if dq.get("ts_min") and dq.get("ts_max"):
        observed = f" (events observed {str(dq['ts_min'])[:10]} to {str(dq['ts_max'])[:10]})"
    if dq:
        rows = (f"{fmt_int(dq.get('rows_read'))} rows read, {fmt_int(dq.get('rows_clean'))} clean, "
                f"{fmt_int(dq.get('rows_quarantined'))} quarantined, {fmt_int(dq.get('rows_duplicate'))} duplicates; "
                f"{fmt_int(dq.get('customers'))} customers")
    else:
        rows = "data-quality metrics not available yet (run `journeylab ingest`)"
    keys = KEY_PARAMS.get(name, [])
    kp = "; ".join(f"{k.split('.')[-1].replace('_', ' ')} = {_fmt_param(get(params, k, None))}" for k in keys)
    extra = {k: v for k, v in (parameters or {}).items() if v is not None}
    if extra:
        kp += ("; " if kp else "") + "; ".join(f"{k.replace('_', ' ')} = {_fmt_param(v)}" for k, v in extra.items())
    rev = git_revision(project_root(params))
    return (f"# {title}\n\n"
            f"<div class=\"jl-header\">\n\n"
            f"**Report date:** {as_of or report_date(params)} · **Data period:** {start_} to {end_incl}{observed}  \n"
            f"**Rows:** {rows}  \n"
            f"**Key parameters:** {kp or 'defaults'}  \n"
            f"**journeylab** {__version__} · revision {rev}\n\n</div>\n")


def md(text: str) -> None:
    """Display Markdown (text with the actual numbers) in the notebook / report."""
    from IPython.display import Markdown, display
    display(Markdown(text))


def summary(sentences: Iterable[str], title: str = "Executive summary") -> None:
    """Display the executive summary box (3-6 plain-language sentences)."""
    body = " ".join(s.strip() for s in sentences if s)
    md(f"## {title}\n\n<div class=\"jl-summary\">\n\n{body}\n\n</div>")


def unavailable(what: str, why: str = "its input has not been produced yet") -> None:
    """One line instead of a section whose data is absent."""
    md(f"<p class=\"jl-note\">{what}: not available — {why}.</p>")


def table(df: Any, formats: dict | None = None, index: bool = False, max_rows: int = 40) -> None:
    """Display a compact formatted table (aggregates only, never raw rows)."""
    from IPython.display import HTML, display
    d = df.head(max_rows).copy()
    for col, f in (formats or {}).items():
        if col in d:
            d[col] = [f(v) if callable(f) else (f.format(v) if v is not None and v == v else "n/a") for v in d[col]]
    d.columns = [str(c).replace("_", " ") for c in d.columns]
    display(HTML(d.to_html(index=index, border=0, na_rep="n/a", escape=True)))


def figure(fig: Any) -> None:
    """Display a matplotlib figure as an embedded PNG and close it."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))


def load_metrics(params: dict, name: str) -> dict | None:
    """``metrics/<name>.json`` (or the path in params), None when absent or unreadable."""
    paths = {"data_quality": get(params, "ingest.metrics", "metrics/data_quality.json"),
             "survival": get(params, "survival.metrics", "metrics/survival.json"),
             "churn": get(params, "churn.metrics", "metrics/churn.json"),
             "attribution": get(params, "attribution.metrics", "metrics/attribution.json")}
    p = project_path(params, paths.get(name, f"metrics/{name}.json"))
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_table(params: dict, relative: str) -> Any:
    """A result table (Parquet or CSV) as pandas, None when absent."""
    import pandas as pd
    p = project_path(params, relative)
    if not p.exists():
        return None
    return pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
