"""The Prometheus metrics of ``mgfast client`` (one process, no multiprocess mode)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CLIENT_READ = Counter("mgfast_client_messages_read_total", "Messages read from the in_stream.")
CLIENT_FORWARDED = Counter(
    "mgfast_client_messages_forwarded_total", "Messages the server accepted.")
CLIENT_FORWARDED_BYTES = Counter(
    "mgfast_client_forwarded_bytes_total", "Bytes of the messages the server accepted.")
CLIENT_RETRIED = Counter(
    "mgfast_client_retries_total", "Message sends repeated after a transient failure.")
CLIENT_REJECTED = Counter(
    "mgfast_client_messages_rejected_total",
    "Messages skipped as permanently invalid (400, 413).")
CLIENT_IN_FLIGHT = Gauge(
    "mgfast_client_in_flight_messages", "Messages read and not yet accepted or rejected.")
