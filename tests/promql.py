"""An instant PromQL query against the lab's Prometheus (published on 127.0.0.1), for cluster tests."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request


def instant(prometheus_url: str, expr: str) -> list[tuple[dict[str, str], float]]:
    """``expr`` evaluated now: each series' labels and value."""
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?{query}", timeout=5) as resp:  # noqa: S310
        return [(r["metric"], float(r["value"][1])) for r in json.load(resp)["data"]["result"]]
