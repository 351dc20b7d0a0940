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
            kernel = "kernel" in type(exc).__name__.lower() or "kernel" in str(exc).lower()
            hint = (f"Check that the Jupyter kernel '{KERNEL}' exists "
                    f"(python -m ipykernel install --sys-prefix --name {KERNEL})." if kernel else
                    "Check the notebook parameters (--param key=value: YAML values that JSON can hold).")
            raise ReportError(f"report {name}: the notebook could not be run ({type(exc).__name__}: {exc}). "
                              + hint) from None
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
        code = [c for c in nb.cells if c.cell_type == "code"
                and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]  # numbering of the source notebook
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
        tag = re.search(r'<meta\b[^>]*name="journeylab-report"[^>]*>', f.read_text(encoding="utf-8"))
        m = re.search(r"""content=(?:"([^"]*)"|'([^']*)')""", tag.group(0)) if tag else None
        if not m:
            continue
        meta = json.loads(html_lib.unescape(m.group(1) or m.group(2)))
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
        html(header(params, name, params["report"]["as_of"], parameters))
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
    return (f"<h1>{html_lib.escape(title)}</h1>\n<div class=\"jl-header\">"
            f"<strong>Report date:</strong> {as_of or report_date(params)} · <strong>Data period:</strong> "
            f"{html_lib.escape(f'{start_} to {end_incl}{observed}')}<br>\n"
            f"<strong>Rows:</strong> {inline_md(rows)}<br>\n"
            f"<strong>Key parameters:</strong> {inline_md(kp or 'defaults')}<br>\n"
            f"<strong>journeylab</strong> {__version__} · revision {html_lib.escape(rev)}</div>\n")


def inline_md(text: str) -> str:
    """Escape HTML, then render **bold** and `code` (for the header and summary boxes)."""
    t = html_lib.escape(str(text), quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def html(fragment: str) -> None:
    """Display an HTML fragment built by the library (escaped content)."""
    from IPython.display import HTML, display
    display(HTML(fragment))


def md(text: str) -> None:
    """Display Markdown (text with the actual numbers) in the notebook / report."""
    from IPython.display import Markdown, display
    display(Markdown(text))


def summary(sentences: Iterable[str], title: str = "Executive summary") -> None:
    """Display the executive summary box (3-6 plain-language sentences)."""
    body = " ".join(inline_md(s.strip()) for s in sentences if s)
    html(f"<h2>{html_lib.escape(title)}</h2>\n<div class=\"jl-summary\"><p>{body}</p></div>")


def unavailable(what: str, why: str = "its input has not been produced yet") -> None:
    """One line instead of a section whose data is absent."""
    html(f"<p class=\"jl-note\">{inline_md(what)}: not available — {inline_md(why)}.</p>")


def table(df: Any, formats: dict | None = None, index: bool = False, max_rows: int = 40) -> None:
    """Display a compact formatted table (aggregates only, never raw rows)."""
    from IPython.display import HTML, display
    d = df.head(max_rows).copy()
    for col, f in (formats or {}).items():
        if col in d:
            d[col] = [f(v) if callable(f) else (f.format(v) if v is not None and v == v else "n/a") for v in d[col]]
    d.columns = [str(c).replace("_", " ") for c in d.columns]
    display(HTML('<div class="jl-table">' + d.to_html(index=index, border=0, na_rep="n/a", escape=True) + "</div>"))


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


# ----------------------------------------------------------------------------- report content
# Loaders and plain-language summaries for the time_to_conversion, churn and attribution reports.
# They read the stage outputs (metrics JSON, result tables) and tolerate absent keys.

_RESULT_DIRS = {"survival": ("survival.output_dir", "data/results/survival"),
                "churn": ("churn.output_dir", "data/results/churn")}


def result_table(params: dict, stage: str, name: str | None) -> Any:
    """A stage's result table (``data/results/<stage>/<name>`` or attribution.csv), None when absent."""
    if stage == "attribution":
        return load_table(params, get(params, "attribution.output", "data/results/attribution.csv"))
    key, default = _RESULT_DIRS[stage]
    return load_table(params, str(Path(get(params, key, default)) / name))


def p_convert(m: dict | None) -> dict:
    """``p_convert`` of survival metrics as {horizon: (p, ci_low, ci_high)} (plain floats or dicts accepted)."""
    out = {}
    for h, v in ((m or {}).get("p_convert") or {}).items():
        if isinstance(v, dict):
            v = (v.get("p"), v.get("ci_low"), v.get("ci_high"))
        else:
            v = (v, None, None)
        if v[0] is not None:
            out[str(h)] = v
    return out


def _ci(lo: Any, hi: Any, fmt=None) -> str:
    fmt = fmt or fmt_num
    return f" (95% CI {fmt(lo)}–{fmt(hi)})" if lo is not None and hi is not None else ""


def survival_summary(m: dict | None) -> list[str]:
    """Executive summary of metrics/survival.json (3-6 sentences)."""
    if not m:
        return ["Survival results are not available yet: run `journeylab survival`."]
    out = [f"We followed {fmt_int(m.get('n_journeys'))} {m.get('journey_type', '')} journeys: "
           f"{fmt_int(m.get('n_converted'))} converted, {fmt_int(m.get('n_lost'))} were lost and "
           f"{fmt_int(m.get('n_censored'))} were still open at the end of the data."]
    med, ci = m.get("median_days_to_conversion"), m.get("median_days_to_conversion_ci") or [None, None]
    if med is not None:
        out.append(f"Half of the leads would convert within {fmt_num(med)} days{_ci(ci[0], ci[1])} if none were lost "
                   f"(Kaplan–Meier median).")
    else:
        out.append(f"The median time to conversion is not available: {m.get('median_days_to_conversion_note', 'not reached')}.")
    if m.get("atc_naive_days") is not None:
        gap = ""
        if med is not None and med > 0:
            d = med - m["atc_naive_days"]
            gap = (f", {fmt_num(abs(d))} days ({fmt_pct(abs(d) / med)}) {'shorter' if d > 0 else 'longer'} than the "
                   f"survival median")
        out.append(f"The naive 'average time to conversion' (converted journeys only) is {fmt_num(m['atc_naive_days'])} days"
                   f"{gap}; it ignores leads that are still deciding, so it "
                   f"{'understates' if (med or 0) >= m['atc_naive_days'] else 'misstates'} how long conversion takes.")
    pc = p_convert(m)
    if pc:
        out.append("Counting lost leads as lost, the chance that a new lead converts is "
                   + ", ".join(f"{fmt_pct(v[0])} by day {k}" for k, v in pc.items()) + ".")
    sentences = m.get("hazard_ratio_sentences") or []
    if sentences:
        first = str(sentences[0]).rstrip(".")
        out.append("The strongest touchpoint effect: " + first + ".")
    return out[:6]


def survival_horizon_text(m: dict) -> str:
    pc = p_convert(m)
    rm = m.get("rmst_days")
    parts = []
    if pc:
        parts.append("By day " + ", ".join(f"{k}: {fmt_pct(v[0])} converted{_ci(v[1], v[2], fmt_pct)}"
                                           for k, v in pc.items()) + ".")
    if rm is not None:
        parts.append(f"Within the first {fmt_num(m.get('rmst_horizon_days'), 0)} days a lead spends on average "
                     f"{fmt_num(rm)} days unconverted (restricted mean).")
    if m.get("p_convert_note"):
        parts.append(m["p_convert_note"] + ".")
    return " ".join(parts) or "No conversion probabilities are available."


def survival_group_table(m: dict, g: str) -> Any:
    """One row per group value: journeys, converted, median days, P(convert) by horizon."""
    import pandas as pd
    grp = (m.get("by_group") or {}).get(g) or {}
    rows = []
    for k, s in grp.items():
        r = {"group": k, "journeys": s.get("n_journeys"), "converted": s.get("n_converted"),
             "median_days": s.get("median_days_to_conversion")}
        for h, v in p_convert(s).items():
            r[f"p_convert_{h}d"] = v[0]
        rows.append(r)
    if not rows:
        return None
    return pd.DataFrame(rows).sort_values("journeys", ascending=False).rename(columns={"group": g})


def small_groups(m: dict, g: str, min_journeys: int = 30) -> list[str]:
    """Group values with fewer than ``min_journeys`` journeys (too few for a readable curve)."""
    grp = (m.get("by_group") or {}).get(g) or {}
    return sorted(str(k) for k, s in grp.items() if (s.get("n_journeys") or 0) < min_journeys)


def survival_group_text(m: dict, g: str, min_journeys: int = 30) -> str:
    """Fastest/slowest group by KM median (groups with at least ``min_journeys``), log-rank test."""
    t = survival_group_table(m, g)
    lr = (m.get("logrank") or {}).get(g) or {}
    parts = []
    if t is not None:
        t = t[t["journeys"].fillna(0) >= min_journeys]
    if t is not None and len(t) > 1 and "median_days" in t and t["median_days"].notna().any():
        fast, slow = t.loc[t["median_days"].idxmin()], t.loc[t["median_days"].idxmax()]
        parts.append(f"By {g.replace('_', ' ')}, the fastest group is {fast[g]} (median {fmt_num(fast['median_days'])} days) "
                     f"and the slowest {slow[g]} (median {fmt_num(slow['median_days'])} days).")
    small = small_groups(m, g, min_journeys)
    if small:
        parts.append(f"{', '.join(small)} ha{'s' if len(small) == 1 else 've'} fewer than {min_journeys} journeys: "
                     f"{'its' if len(small) == 1 else 'their'} curve{'' if len(small) == 1 else 's'} "
                     f"{'is' if len(small) == 1 else 'are'} left out of the figure (the table still lists them).")
    p = lr.get("p_value", lr.get("p"))
    if p is not None:
        parts.append(f"A log-rank test {'finds' if p < 0.05 else 'does not find'} a difference between the groups "
                     f"(p = {p:.3g}).")
    elif lr.get("statistic_note"):
        parts.append(str(lr["statistic_note"]) + ".")
    return " ".join(parts) or "No group comparison available."


def hazard_text(m: dict | None, hr: Any) -> str:
    """Plain words for the touchpoint hazard ratios."""
    sig_up = hr[hr["ci_low"] > 1]["touchpoint"].tolist()
    sig_down = hr[hr["ci_high"] < 1]["touchpoint"].tolist()
    top = hr.iloc[0]
    txt = (f"One more **{top['touchpoint']}** touch multiplies the conversion rate by {fmt_num(top['hr'], 2)}"
           f"{_ci(top['ci_low'], top['ci_high'], lambda v: fmt_num(v, 2))}. "
           f"Touchpoints that clearly speed up conversion: {', '.join(sig_up) or 'none'}; clearly slow it down: "
           f"{', '.join(sig_down) or 'none'}.")
    if m and m.get("fitting_path_note"):
        txt += f" Method: {m['fitting_path_note']}."
    return txt


def survival_model_text(m: dict) -> str:
    """Proportional-hazards check, AFT choice and holdout accuracy in plain words."""
    lines = []
    if m.get("ph_check"):
        lines.append(f"- Proportional-hazards check: {m['ph_check']}")
    if m.get("aft_model"):
        q = m.get("aft_time_quantiles_days") or {}
        qs = ", ".join(f"{int(float(k) * 100)}% by {fmt_num(v)} days" for k, v in q.items() if v is not None)
        lines.append(f"- Best-fitting parametric model (lowest AIC): {m['aft_model']}" + (f"; it predicts {qs} if none were lost." if qs else "."))
    ci = m.get("c_index") or {}
    if isinstance(ci, dict) and ci.get("harrell") is not None:
        lines.append(f"- On later journeys held out from fitting (from {(m.get('holdout') or {}).get('start', '?')}), "
                     f"the model ranks who converts sooner correctly {fmt_pct(ci['harrell'])} of the time "
                     f"(Harrell's C; Uno's C {fmt_num(ci.get('uno'), 3)}; 50% = guessing).")
    elif m.get("c_index_note"):
        lines.append(f"- Holdout accuracy: {m['c_index_note']}")
    if m.get("integrated_brier") is not None:
        lines.append(f"- Integrated Brier score {fmt_num(m['integrated_brier'], 3)} (0 = perfect, 0.25 = uninformative).")
    return "\n".join(lines) or "No model diagnostics available."


CHURN_MODEL_LABELS = {"logistic": "logistic regression", "gbm": "gradient boosting", "bgnbd": "BG/NBD baseline"}


def churn_model_table(m: dict | None) -> Any:
    """Model comparison table from metrics/churn.json (None when no model was evaluated)."""
    import pandas as pd
    models = (m or {}).get("models") or {}
    rows = []
    for name, r in models.items():
        if r.get("roc_auc") is None:
            continue
        rows.append({"model": CHURN_MODEL_LABELS.get(name, name), "roc_auc": r.get("roc_auc"), "pr_auc": r.get("pr_auc"),
                     "brier": r.get("brier"), "calibration_error": r.get("ece"),
                     "lift_top_10pct": r.get("lift_top_decile"), "capture_top_10pct": r.get("capture_top_decile")})
    return pd.DataFrame(rows) if rows else None


def _best_churn(m: dict) -> tuple[str, dict] | None:
    models = {k: v for k, v in ((m or {}).get("models") or {}).items() if v.get("roc_auc") is not None and k != "bgnbd"}
    if not models:
        return None
    k = max(models, key=lambda n: models[n]["roc_auc"])
    return k, models[k]


def churn_summary(m: dict | None) -> list[str]:
    """Executive summary of metrics/churn.json (aggregates only)."""
    if not m:
        return ["Churn results are not available yet: run `journeylab churn`."]
    out = []
    best = _best_churn(m)
    ev = m.get("eval_cutoff")
    base = None
    if best:
        k, r = best
        base = r.get("base_rate")
        out.append(f"Of the {fmt_int(r.get('n_scored'))} active customers on {ev}, {fmt_pct(base)} left within the next "
                   f"{fmt_num(m.get('horizon_days'), 0)} days.")
        out.append(f"The {CHURN_MODEL_LABELS.get(k, k)} model ranks them with ROC-AUC {fmt_num(r['roc_auc'], 3)}; its 10% "
                   f"highest-risk customers contain {fmt_pct(r.get('capture_top_decile'))} of all leavers "
                   f"({fmt_num(r.get('lift_top_decile'), 1)}× the average rate).")
        bg = ((m.get("models") or {}).get("bgnbd") or {}).get("roc_auc")
        if bg is not None:
            out.append(f"The purchase-pattern baseline (BG/NBD) reaches ROC-AUC {fmt_num(bg, 3)} on the same customers.")
        if m.get("oracle_auc_eval") is not None:
            out.append(f"The best achievable ROC-AUC, from the simulator's true risks, is {fmt_num(m['oracle_auc_eval'], 3)}.")
    else:
        out.append(f"No churn model could be evaluated: {m.get('models_note') or 'see the notes below'}.")
    drivers = m.get("top_drivers") or []
    if drivers:
        out.append("The strongest drivers of leaving are " + ", ".join(str(d.get("driver")) for d in drivers[:3]) + ".")
    return out[:6]


def churn_model_text(m: dict) -> str:
    best = _best_churn(m)
    if not best:
        return m.get("models_note") or ""
    k, r = best
    text = (f"The best model is {CHURN_MODEL_LABELS.get(k, k)}: its expected calibration error is "
            f"{fmt_pct(r.get('ece'), 1)} (average gap between predicted and observed risk).")
    return text + " " + churn_survival_text(m)


def churn_survival_text(m: dict | None) -> str:
    """One sentence on the time-to-dissolution model ('when', not only 'whether')."""
    s = (m or {}).get("survival") or {}
    c = s.get("c_index_eval")
    if c is None:
        return f"No time-to-dissolution model: {s.get('note') or s.get('survival_note') or 'not fitted'}." if s else ""
    label = {"cox_ph": "Cox proportional-hazards", "weibull_aft": "Weibull AFT"}.get(s.get("model"), str(s.get("model")))
    return (f"A {label} model of the time until a customer leaves orders customers by how soon they leave with "
            f"C-index {fmt_num(c, 3)} on the evaluation date (0.5 = guessing, 1 = perfect order; "
            f"{fmt_int(s.get('n_eval'))} customers).")


def churn_driver_text(m: dict | None) -> str:
    drivers = (m or {}).get("top_drivers") or []
    lines = []
    for d in drivers[:5]:
        text = d.get("summary") or d.get("text") or d.get("sentence")
        lines.append(f"- **{d.get('driver')}**" + (f": {text}" if text else ""))
    return "\n".join(lines) or "No driver summaries available."


def lifecycle_text(life: Any) -> str:
    last = life[life["cutoff"] == life["cutoff"].max()]
    tot = last["customers"].sum()
    if not tot:
        return ""
    parts = ", ".join(f"{r.stage} {fmt_pct(r.customers / tot)}" for r in last.itertuples())
    return f"On {str(last['cutoff'].iloc[0])[:10]}, customers by lifecycle stage: {parts}."


def attribution_models(att: Any, models: Iterable[str] | None = None) -> Any:
    """Rows of attribution.csv for the chosen models (overall journey type when several)."""
    d = att.copy()
    if "journey_type" in d and d["journey_type"].nunique() > 1:
        keep = "all" if (d["journey_type"] == "all").any() else d["journey_type"].iloc[0]
        d = d[d["journey_type"] == keep]
    if models:
        wanted = set(models)
        sel = d[d["model"].isin(wanted) | d["model"].str.split("_").str[0].isin(wanted)]
        d = sel if len(sel) else d
    return d.reset_index(drop=True)


def attribution_wide(d: Any) -> Any:
    """Touchpoint x model table of shares."""
    return d.pivot_table(index="touchpoint", columns="model", values="share", aggfunc="sum").reset_index()


def model_label(model: str) -> str:
    """'markov_2' -> 'Markov (order 2)', 'last_non_direct' -> 'last non-direct'."""
    if model.startswith("markov_"):
        return f"Markov (order {model.split('_', 1)[1]})"
    return {"shapley": "Shapley", "hazard": "hazard-based", "last_non_direct": "last non-direct",
            "linear_unique": "linear (unique)", "position_based": "position-based", "time_decay": "time decay"}.get(
        model, model.replace("_", " "))


def attribution_ci_table(d: Any, models: Iterable[str]) -> Any:
    """Touchpoint x model: share of conversions with its 95% bootstrap CI, as text ('21.2% (20.9–21.5)').

    The CI columns of attribution.csv are in conversions; they are divided by the model's total
    credited conversions (a fixed total, so the interval is that of the share to within the
    bootstrap variation of the total)."""
    import pandas as pd
    rows = {}
    for model in models:
        sub = d[d["model"] == model]
        if not len(sub):
            continue
        total = float(sub["conversions"].sum())
        col = {}
        for r in sub.itertuples():
            text = fmt_pct(r.share, 1)
            lo, hi = getattr(r, "ci_low", None), getattr(r, "ci_high", None)
            if lo is not None and hi is not None and lo == lo and hi == hi and total > 0:
                text += f" ({100 * lo / total:.1f}–{100 * hi / total:.1f})"
            col[r.touchpoint] = text
        rows[model_label(model)] = col
    if not rows:
        return None
    return pd.DataFrame(rows).rename_axis("touchpoint").reset_index().fillna("n/a")


def attribution_summary(m: dict | None, att: Any) -> list[str]:
    """Executive summary of the attribution results."""
    if att is None or not len(att):
        return ["Attribution results are not available yet: run `journeylab attribute`."]
    d = attribution_models(att)
    out = [f"{fmt_int((m or {}).get('total_conversions'))} conversions were credited to touchpoints by "
           f"{d['model'].nunique()} models."]
    for model in ("markov_1", "markov", "shapley", "last"):
        sub = d[d["model"] == model]
        if len(sub):
            top = sub.sort_values("share", ascending=False).iloc[0]
            ci = ""
            if "ci_low" in sub and top.get("ci_low") == top.get("ci_low"):
                total = float(sub["conversions"].sum()) if "conversions" in sub else 0.0
                scale = 1 / total if (top.get("ci_high", 0) > 1 and total > 0) else 1.0  # CIs in conversions
                ci = _ci(top["ci_low"] * scale, top["ci_high"] * scale, lambda v: fmt_pct(v, 1))
            out.append(f"The {model_label(model)} model gives the most credit to {top['touchpoint']}: "
                       f"{fmt_pct(top['share'], 1)} of conversions{ci}.")
            break
    gt = (m or {}).get("ground_truth") or {}
    if gt.get("best_data_driven"):
        out.append(f"Against the simulator's true incremental conversions, {gt['best_data_driven']} is the closest data-driven "
                   f"model (credit misplaced: {fmt_pct(gt.get('best_data_driven_l1'))}), versus "
                   f"{fmt_pct(gt.get('last_touch_l1'))} for last-touch.")
    return out[:6]


def attribution_truth_table(m: dict | None) -> Any:
    import pandas as pd
    gt = (m or {}).get("ground_truth") or {}
    rows = gt.get("models") or []
    if not rows:
        return None
    return pd.DataFrame([{"model": model_label(str(r["model"])), "l1_distance": r.get("l1")}
                         for r in rows]).sort_values("l1_distance")


def attribution_truth_text(m: dict) -> str:
    gt = m.get("ground_truth") or {}
    if gt.get("best_beats_last_touch") is None:
        return ""
    return ("The best data-driven model is closer to the truth than last-touch attribution."
            if gt["best_beats_last_touch"] else
            "On this data the data-driven models are not closer to the truth than last-touch attribution.")


def attribution_cost_table(att: Any, models: Iterable[str] = ("last", "markov_1", "shapley", "hazard")) -> Any:
    """Touchpoints with a cost: spend, then cost per attributed conversion and ROAS (revenue / cost)
    under each of ``models`` (those present). None when no costs were joined."""
    if att is None or not {"cost", "roas"} <= set(att.columns) or att["cost"].isna().all():
        return None
    import pandas as pd
    d = attribution_models(att)
    d = d[d["cost"].notna() & (d["cost"] > 0)]
    present = [m for m in models if m in set(d["model"])] or sorted(set(d["model"]))[:4]
    out = d.groupby("touchpoint", as_index=False)["cost"].first()
    for m in present:
        sub = d[d["model"] == m].set_index("touchpoint")
        out[f"cost per conversion ({model_label(m)})"] = out["touchpoint"].map(sub["cost_per_conversion"])
        out[f"ROAS ({model_label(m)})"] = out["touchpoint"].map(sub["roas"])
    return out.sort_values("cost", ascending=False).reset_index(drop=True)


def attribution_cost_text(t: Any) -> str:
    """Which paid touchpoint returns the most and the least revenue per unit of spend (first ROAS model)."""
    roas = [c for c in t.columns if c.startswith("ROAS (")]
    if not len(t) or not roas:
        return ""
    col = next((c for c in roas if "Markov" in c), roas[0])
    v = t.dropna(subset=[col])
    if not len(v):
        return ""
    hi, lo = v.loc[v[col].idxmax()], v.loc[v[col].idxmin()]
    label = col[len("ROAS ("):-1]
    return (f"Total spend {fmt_num(t['cost'].sum(), 0)} over {len(t)} paid touchpoints. Under {label} attribution "
            f"**{hi['touchpoint']}** returns the most revenue per unit of spend (ROAS {fmt_num(hi[col], 1)}) and "
            f"**{lo['touchpoint']}** the least ({fmt_num(lo[col], 1)}). ROAS depends on the attribution model: "
            "compare the columns before moving budget.")
