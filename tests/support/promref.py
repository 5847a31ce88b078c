"""prometheus_client holding the same families as collector.exposition: the reference the exposition tests compare
our writer's bytes to, and the library bench/dependencies.py times it against."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.exposition import COUNTER, Family


def registry_of(families: Sequence[Family]) -> CollectorRegistry:
    """A registry whose one collector yields these families, for prometheus_client's generate_latest."""
    class Fixed(Collector):
        def collect(self) -> list[Metric]:
            metrics: list[Metric] = []
            for f in families:
                cls = CounterMetricFamily if f.type == COUNTER else GaugeMetricFamily
                metric = cls(f.name, f.help, labels=list(f.labels))
                for values, value in f.samples:
                    metric.add_metric(list(values), value)
                metrics.append(metric)
            return metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return registry
