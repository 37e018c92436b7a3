"""HTTP basic authentication of ``POST /`` with users kept in etcd (upstream's ``auth.basic``).

One concept per module:

- ``config``      the typed ``auth.basic`` settings, built from what the config loader validated
- ``rules``       routing-label rules (``set``/``unset``/``and``/``or``/``not``) and their check
- ``records``     a user record in etcd (JSON or YAML) -> ``UserRecord``
- ``lru``         bounded LRU maps that count evictions, and upstream's eviction-rate warning
- ``quarantine``  failed attempts and quarantine by (username, client address), bounded
- ``peers``       the workers of one server share their failed attempts
- ``passwords``   argon2 verification on a small thread pool, with a dummy hash for unknown users
- ``etcd``        a small etcd v3 client (range, watch, put, delete) on grpc.aio
- ``store``       the user store: initial read, then a watch; reconnects and resyncs
- ``guard``       the per-request decision: 401, 503 or the user's label rule
- ``runtime``     the parts above started and stopped together in a worker
- ``cli``         ``mgfast users``: hash a password, put, delete and list user records
"""
