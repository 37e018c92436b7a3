"""Certificate tooling for mutual TLS: a private CA, CRLs and the OpenSSL hash directory.

The command line is :mod:`mgfast.pki.cli` (``mgfast pki ...``); the server's start-up checks and
CRL metrics use :func:`mgfast.pki.store.read_store`.
"""

from mgfast.pki.store import CaInfo, CrlInfo, StoreStatus, read_store

__all__ = ["CaInfo", "CrlInfo", "StoreStatus", "read_store"]
