"""Every Prometheus metric the server exports, defined in one place (the client's are in
``client_catalog``, so that neither exports the other's zeros).

Import this module only after ``mgfast.metrics.multiprocess.prepare`` has run in the process
(it decides where the values live). Label values are bounded: reasons and results are closed
sets, statuses are HTTP codes, issuers and subjects come from the operator's own hash directory.
The hot paths count in plain attributes; ``mgfast.metrics.export`` moves them here once a second.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# -- server: TLS ---------------------------------------------------------------------------------
TLS_HANDSHAKES = Counter(
    "mgfast_tls_handshakes_total", "TLS handshakes by outcome (ok or rejected) and reason.",
    ["outcome", "reason"])
TLS_REVOKED = Counter(
    "mgfast_tls_revoked_rejections_total",
    "Handshakes rejected because the client certificate is revoked, by issuer.", ["issuer"])
TLS_HANDSHAKE_SECONDS = Histogram(
    "mgfast_tls_handshake_duration_seconds", "Time from the first TLS byte to the verdict.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
TLS_LIVE_CLOSED = Counter(
    "mgfast_tls_live_connections_closed_total",
    "Open connections closed because their client certificate no longer verifies.", ["reason"])

# -- server: HTTP and messages ------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "mgfast_http_requests_total", "HTTP requests answered, by status code.", ["status"])
REQUEST_SECONDS = Histogram(
    "mgfast_request_duration_seconds",
    "POST / latency, from the complete request to the response, writer result included.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
             1, 2.5, 5))
MESSAGES_FORWARDED = Counter(
    "mgfast_messages_forwarded_total", "Savant messages written to the out_stream (200).")
BYTES_FORWARDED = Counter(
    "mgfast_forwarded_bytes_total", "Bytes of those messages (topic, message and extra parts).")

# -- server: egress ------------------------------------------------------------------------------
EGRESS_RESULTS = Counter(
    "mgfast_egress_results_total",
    "out_stream writer results: success, ack, send_timeout, ack_timeout.", ["result"])
EGRESS_QUEUE = Gauge(
    "mgfast_egress_queue_depth", "Messages queued in the egress writer, not yet written.",
    multiprocess_mode="livesum")

# -- server: processes ---------------------------------------------------------------------------
RESTARTS = Counter(
    "mgfast_worker_restarts_total", "Child processes restarted by the supervisor.", ["child"])


# -- server: basic authentication (auth.basic) ---------------------------------------------------
AUTH_CHECKS = Counter(
    "mgfast_auth_checks_total",
    "POST / basic-auth verdicts by reason: ok, missing, malformed, unknown_user, wrong_password, "
    "quarantined, labels_denied, not_synced, bad_record, busy.", ["reason"])
AUTH_QUARANTINED = Gauge(
    "mgfast_auth_quarantined",
    "(username, client address) pairs and addresses in quarantine now.",
    multiprocess_mode="livesum")
# Labelled by the etcd key prefix so that only the workers (which set them) have a value: the
# supervisor's and egress's would be a 0 in the minimum.
AUTH_STORE_SYNCED = Gauge(
    "mgfast_auth_user_store_synced",
    "1 when every worker has read the users from etcd at least once (until then POST / is 503).",
    ["path"], multiprocess_mode="livemin")
AUTH_STORE_CONNECTED = Gauge(
    "mgfast_auth_user_store_connected",
    "0 while any worker's connection to etcd is failing (it retries); 1 otherwise.",
    ["path"], multiprocess_mode="livemin")
AUTH_USERS = Gauge(
    "mgfast_auth_users", "User records under auth.basic.etcd.path, as the workers see them.",
    multiprocess_mode="livemax")
AUTH_RESYNCS = Counter(
    "mgfast_auth_user_store_resyncs_total",
    "Full re-reads of the users after an etcd connection was lost.")
AUTH_EVICTIONS = Counter(
    "mgfast_auth_cache_evictions_total",
    "Entries evicted from the authentication caches, by cache: user, auth check result, "
    "auth failed attempt, auth quarantine.", ["cache"])


def create_known_series() -> None:
    """Create every series whose labels are known in advance at 0, so that rate() and
    increase() see the first event (a series born with its first event looks like no change)."""
    from mgfast.tls.outcome import REASONS
    for reason in REASONS:
        TLS_HANDSHAKES.labels("ok" if reason == "ok" else "rejected", reason)
        if reason != "ok":
            TLS_LIVE_CLOSED.labels(reason)
    for result in ("success", "ack", "send_timeout", "ack_timeout"):
        EGRESS_RESULTS.labels(result)
    for child in ("worker", "egress"):
        RESTARTS.labels(child)


# -- server: the hash directory (collected at scrape time by mgfast.metrics.store) ------------
CRL_NEXT_UPDATE = "mgfast_crl_next_update_timestamp_seconds"
CRL_REVOKED = "mgfast_crl_revoked_certificates"
CA_EXPIRY = "mgfast_ca_expiry_timestamp_seconds"
