"""Command line: ``journeylab <stage>``; each stage calls ``<module>.run_stage(params)``.

User errors (:class:`JourneylabError`) print one paragraph and exit 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

import yaml

from . import __version__
from .config import load_params
from .errors import JourneylabError

STAGES = {
    "simulate": ("journeylab.simulate", "Generate the built-in journey log and its ground truth (data/raw)."),
    "ingest": ("journeylab.ingest", "Raw input -> data/clean/events.parquet, quarantine and data-quality metrics."),
    "build": ("journeylab.engine", "Clean events -> journey tables under data/journeys (DuckDB or Spark)."),
    "survival": ("journeylab.survival", "Time-to-conversion survival analysis -> metrics/survival.json."),
    "churn": ("journeylab.churn", "Churn / dissolution prediction -> metrics/churn.json."),
    "attribute": ("journeylab.attribution", "Touchpoint attribution -> data/results/attribution.csv."),
}


def _plain(value):
    """YAML dates/datetimes as ISO strings (papermill parameters must be JSON), recursively."""
    import datetime as dt
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _parse_value(text: str):
    """YAML-typed value: '30' -> 30, 'true' -> True, '[7, 30]' -> [7, 30], 'x' -> 'x',
    '2025-01-01' -> '2025-01-01' (dates stay ISO strings)."""
    try:
        return _plain(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def _key_values(pairs: Sequence[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise JourneylabError(f"--set/--param expects key=value, got '{pair}'.")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def stage_summary(stage: str, result: dict, max_items: int = 14) -> str:
    """A few readable lines about a finished stage: its top-level numbers and words (nested
    sections are only named; the full results are in the metrics file the stage wrote)."""
    lines = [f"journeylab {stage}: done"]
    nested = []
    for key, value in result.items():
        if isinstance(value, float):
            lines.append(f"  {key}: {value:.4g}")
        elif isinstance(value, (int, str, bool)) or value is None:
            text = str(value)
            lines.append(f"  {key}: {text if len(text) <= 100 else text[:97] + '...'}")
        elif isinstance(value, (list, tuple)) and len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value):
            lines.append(f"  {key}: {', '.join(map(str, value))}")
        else:
            nested.append(key)
        if len(lines) > max_items:
            lines.append("  ...")
            break
    if nested:
        lines.append(f"  (also: {', '.join(nested[:12])}{' ...' if len(nested) > 12 else ''}; see the stage's metrics JSON)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="journeylab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"journeylab {__version__}")
    parser.add_argument("--params", default=None, help="parameters file (default: params.yaml in the project root)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a parameter for this run, dotted key, YAML value (e.g. engine.lookback_days=30)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, description=help_text)
    validate = sub.add_parser("validate", help="Print the data-quality summary of a raw file without running the pipeline.")
    validate.add_argument("path", help="CSV or Parquet file, glob or folder")
    report = sub.add_parser("report", help="Execute report notebooks with papermill and render shareable HTML.")
    report.add_argument("name", nargs="?", help="notebook name (journey_overview, time_to_conversion, churn, attribution)")
    report.add_argument("--all", action="store_true", help="render every report and reports/index.html")
    report.add_argument("--param", action="append", metavar="KEY=VALUE", help="notebook parameter (YAML-typed)")
    report.add_argument("--as-of", dest="as_of", default=None, help="report date (YYYY-MM-DD)")
    report.add_argument("--out", default=None, help="output folder (default reports/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, overrides=_key_values(args.set))
        if args.command == "validate":
            from . import ingest
            summary = ingest.validate(args.path, params)
            print(ingest.format_summary(summary))
            return 0
        if args.command == "report":
            from . import report
            if not args.all and not args.name:
                raise JourneylabError("journeylab report: name a report (e.g. journey_overview) or pass --all.")
            return report.main(params, name=args.name, run_all=args.all, parameters=_key_values(args.param),
                               as_of=args.as_of, out_dir=args.out)
        module = importlib.import_module(STAGES[args.command][0])
        result = module.run_stage(params)
        if result:
            print(stage_summary(args.command, result))
        return 0
    except JourneylabError as exc:
        print(f"journeylab {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
