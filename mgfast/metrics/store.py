"""Hash-directory health as Prometheus gauges, read at scrape time (cached until it changes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from mgfast.metrics import catalog
from mgfast.pki.store import StoreStatus, read_store


class StoreCollector:
    def __init__(self, hash_dir: Path) -> None:
        self.hash_dir = Path(hash_dir)
        self.signature: tuple[tuple[str, int], ...] | None = None
        self.status: StoreStatus | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self._status()
        next_update = GaugeMetricFamily(
            catalog.CRL_NEXT_UPDATE, "nextUpdate of the CRL in use for each issuer (Unix time).",
            labels=["issuer"])
        revoked = GaugeMetricFamily(
            catalog.CRL_REVOKED, "Serials revoked by the CRL in use for each issuer.",
            labels=["issuer"])
        expiry = GaugeMetricFamily(
            catalog.CA_EXPIRY, "notAfter of each CA certificate in the directory (Unix time).",
            labels=["subject"])
        for crl in status.effective_crls():
            if crl.next_update is not None:
                next_update.add_metric([crl.issuer], crl.next_update.timestamp())
            revoked.add_metric([crl.issuer], len(crl.revoked_serials))
        for ca in status.cas:
            if ca.reachable:
                expiry.add_metric([ca.subject], ca.not_after.timestamp())
        yield next_update
        yield revoked
        yield expiry

    def _status(self) -> StoreStatus:
        try:
            names = sorted(os.listdir(self.hash_dir))
            signature = tuple((n, os.stat(self.hash_dir / n).st_mtime_ns) for n in names)
        except OSError:
            signature = None
        if self.status is None or signature != self.signature:
            self.status = read_store(self.hash_dir)
            self.signature = signature
        return self.status
