"""Per-layer numbers: static counts (params, bytes, MACs/FLOPs, activation memory) and latency."""

from effstudio.core.metrics.static import compute_static
from effstudio.core.metrics.table import METRICS, MetricInfo, MetricsTable

__all__ = ["METRICS", "MetricInfo", "MetricsTable", "compute_static"]
