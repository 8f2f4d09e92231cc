"""The engines' own Prometheus metrics, merged into one exposition for the
gateway's ``/metrics/engines`` (each series labelled with its replica)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

logger = logging.getLogger("seed_serve.engine_metrics")


def relabel_engine_metrics(pages: dict[str, str]) -> bytes:
    """The engines' pages (by replica id) as one exposition, each series
    labelled with its replica (families merged, so HELP/TYPE appear once)."""
    families: dict[str, Metric] = {}
    for replica_id, text in sorted(pages.items()):
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            logger.warning("unparsable metrics from %s: %s", replica_id, exc)
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                Sample(s.name, {**s.labels, "replica": replica_id}, s.value, s.timestamp)
                for s in family.samples
            )

    class _Snapshot:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry)
