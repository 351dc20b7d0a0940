"""Canonical clean-event schema shared by every stage (see docs/DESIGN.md)."""
from __future__ import annotations

import re

KINDS = ("touch", "conversion", "dissolution", "survey")
PHASES = ("pre_purchase", "purchase", "post_purchase")
UNKNOWN_PHASE = "unknown"
OTHER_TOUCHPOINT = "other"

# Required canonical columns after mapping, in output order.
CANONICAL_COLUMNS = (
    "customer_id", "ts", "touchpoint", "kind", "value", "score", "survey",
    "stage", "phase", "channel_group", "paid", "event_id",
)
REQUIRED_INPUT_COLUMNS = ("customer_id", "ts", "touchpoint")

DEFAULT_STAGES = ("awareness", "interest", "evaluation", "purchase", "loyalty")
LIFECYCLE_STAGES = ("awareness", "exploration", "expansion", "commitment", "dissolution")

# Journey boundary states used by paths/transitions.
START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"
PATH_SEP = " > "
STATE_SEP = ","


def safe_name(touchpoint: str) -> str:
    """Column-safe suffix for a touchpoint: lowercase, [a-z0-9_] only ("Paid Search" -> "paid_search")."""
    s = re.sub(r"[^a-z0-9_]+", "_", str(touchpoint).strip().lower()).strip("_")
    return s or "blank"
