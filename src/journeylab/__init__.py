"""journeylab: customer-journey analytics research kit.

Modules map to the domain: ``simulate`` (journey simulator with ground truth), ``ingest``
(raw -> canonical clean events, nothing lost), ``engine`` (Ibis sufficient statistics on
DuckDB or Spark), ``survival`` (time to conversion), ``churn`` (dissolution prediction),
``attribution`` (touchpoint credit) and ``report`` (papermill notebooks -> shareable HTML).
"""
from __future__ import annotations

__version__ = "0.1.0"
