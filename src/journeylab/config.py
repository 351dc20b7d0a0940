"""Load params.yaml and resolve project paths.

All stages read one dict (the parsed params.yaml). Paths in params are relative to the
project root, which is the folder holding params.yaml (or ``JOURNEYLAB_ROOT``).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PARAMS_FILE = "params.yaml"


def find_root(start: str | os.PathLike | None = None) -> Path:
    """Project root: ``$JOURNEYLAB_ROOT`` or the nearest parent of ``start`` holding params.yaml."""
    env = os.environ.get("JOURNEYLAB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / PARAMS_FILE).exists():
            return p
    return here


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Parse params.yaml into a dict; ``overrides`` uses dotted keys (``{"engine.lookback_days": 30}``)."""
    p = Path(path) if path else find_root() / PARAMS_FILE
    if not p.exists():
        raise ConfigError(f"{p}: parameters file not found. Run journeylab from the project root "
                          f"(the folder with {PARAMS_FILE}) or pass --params PATH.")
    try:
        params = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc}). Fix the indentation or quoting on the line named.") from None
    params = copy.deepcopy(params)
    params.setdefault("_root", str(p.parent.resolve()))
    for key, value in (overrides or {}).items():
        set_dotted(params, key, value)
    return params


def set_dotted(params: dict, key: str, value: Any) -> None:
    """Set ``params['a']['b'] = value`` for ``key='a.b'`` (creating sub-dicts)."""
    node = params
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"params.yaml: cannot set {key}: {part} is not a section")
    node[parts[-1]] = value


def get(params: dict, key: str, default: Any = ...) -> Any:
    """Dotted lookup ``get(params, 'engine.lookback_days')``; raises ConfigError when missing and no default."""
    node: Any = params
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            if default is ...:
                raise ConfigError(f"params.yaml: setting '{key}' is missing. Add it (see the defaults in the repository's params.yaml).")
            return default
    return node


def root(params: dict) -> Path:
    return Path(params.get("_root") or find_root())


def path(params: dict, relative: str | os.PathLike) -> Path:
    """Resolve a project-relative path from params against the project root."""
    p = Path(relative)
    return p if p.is_absolute() else root(params) / p


def simulated_input(params: dict) -> bool:
    """True when the pipeline's input is the built-in simulator's output (``ingest.input`` is
    ``simulate.output``), i.e. when the simulator's ground truth describes the data analysed."""
    inp = get(params, "ingest.input", None)
    sim = get(params, "simulate.output", "data/raw/events.parquet")
    if not inp or not sim:
        return False
    try:
        return path(params, str(inp)).resolve() == path(params, str(sim)).resolve()
    except OSError:
        return False


def truth_file(params: dict, key: str = "simulate.truth", default: str = "data/raw/truth.json") -> Path | None:
    """Path of a simulator ground-truth file when it exists *and* describes the analysed data
    (see :func:`simulated_input`); None otherwise (a user's own data has no ground truth, even
    though the simulate stage still writes one)."""
    if not simulated_input(params):
        return None
    p = path(params, get(params, key, default))
    return p if p.exists() else None
