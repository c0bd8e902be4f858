"""What each quarantine holds and what left it: from its ``summary.json``, and the config.

The cleaner rewrites ``DIRECTORY/summary.json`` of each quarantine after each sweep, and
``restore`` and ``quarantine purge`` after theirs (``cleaner.quarantine``): files and
allocated bytes per rule, restored and expired totals. It is read like the state file,
without blocking and with a size cap; a quarantine whose summary cannot be read gives
``limpeza_quarantine_up 0`` for its rules and none of their series. Only rules with a
quarantine appear; ``limpeza_quarantine_max_bytes`` comes from the config (0: no limit).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cleaner.config import Config
from cleaner.quarantine import configs
from exporter.faults import Faults
from exporter.regular_file import read_regular_file

#: A summary holds a few numbers per rule.
MAX_SUMMARY_BYTES = 1 << 20


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def quarantine_metrics(config: Config, faults: Faults) -> Iterator[Metric]:
    quarantines = configs(config.files)
    if not quarantines:
        return
    up = GaugeMetricFamily(
        "limpeza_quarantine_up",
        "1 when the quarantine's summary was read in this scrape.",
        labels=["rule"],
    )
    files = GaugeMetricFamily(
        "limpeza_quarantine_files", "Files in the rule's quarantine now.", labels=["rule"]
    )
    size = GaugeMetricFamily(
        "limpeza_quarantine_bytes",
        "Bytes (allocated) the rule's files take in its quarantine now.",
        labels=["rule"],
    )
    limit = GaugeMetricFamily(
        "limpeza_quarantine_max_bytes",
        "The rule's quarantine.max_bytes (config); 0 is no limit.",
        labels=["rule"],
    )
    restored = CounterMetricFamily(
        "limpeza_quarantine_restored",
        "Files of the rule restored from its quarantine.",
        labels=["rule"],
    )
    expired = CounterMetricFamily(
        "limpeza_quarantine_expired",
        "Files of the rule unlinked from its quarantine (retention, max_bytes or purge).",
        labels=["rule"],
    )
    for directory, rules in quarantines.items():
        path = directory / "summary.json"
        try:
            raw = json.loads(read_regular_file(path, MAX_SUMMARY_BYTES))
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            raw, problem = {}, None  # nothing quarantined yet
        except (OSError, ValueError) as exc:
            raw, problem = None, f"unusable ({exc})"
        else:
            problem = None
        faults.report(f"quarantine summary {path}", problem)
        for rule in rules:
            assert rule.quarantine is not None
            up.add_metric([rule.name], 0 if raw is None else 1)
            limit.add_metric([rule.name], rule.quarantine.max_bytes)
            if raw is None:
                continue
            held = (
                raw.get("rules", {}).get(rule.name, {})
                if isinstance(raw.get("rules"), dict)
                else {}
            )
            held = held if isinstance(held, dict) else {}
            files.add_metric([rule.name], _count(held.get("files")))
            size.add_metric([rule.name], _count(held.get("bytes")))
            for family, key in ((restored, "restored"), (expired, "expired")):
                totals = raw.get(key)
                family.add_metric(
                    [rule.name], _count(totals.get(rule.name)) if isinstance(totals, dict) else 0
                )
    yield from (up, files, size, limit, restored, expired)
