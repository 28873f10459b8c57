"""Events, system samples and Prometheus metrics."""
