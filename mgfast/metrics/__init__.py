"""Prometheus metrics: the catalog, the once-a-second export, the listener, store health."""
