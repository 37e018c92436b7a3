"""``mgfast client``: a Savant in_stream reader that forwards every message over HTTP(S).

Modules: ``main`` (process entry, signals, drain), ``forwarder`` (reader, in-flight window,
routing), ``lane`` (ordered delivery with retries over one connection, batching), ``target``
(URL and request heads), ``health`` (``GET /health``), ``stats`` (counters).
"""
