"""gpu-proc-collector: per-process GPU metrics for node_exporter's textfile collector."""

__version__ = "0.1.0"
