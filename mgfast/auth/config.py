"""The ``auth.basic`` settings as typed objects.

The config loader checks the JSON shape (keys, types, durations, files) as for every other
section, then hands the result to :func:`build`, which adds the checks that need several fields
at once and returns a :class:`BasicAuthConfig`. Durations are float seconds, as everywhere in
mgfast (upstream turns ``connect_timeout`` and ``lease_timeout`` into milliseconds and passes
them where seconds are expected; here a duration means what it says).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn
from urllib.parse import urlsplit

JsonPath = tuple[str | int, ...]  # as mgfast.config.validation's (which imports this module)
Fail = Callable[[JsonPath, str, str], NoReturn]


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheUsage:
    """Warn when more than ``evicted_threshold`` entries are evicted per ``period``."""

    period: float
    evicted_threshold: int


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheConfig:
    size: int
    usage: CacheUsage | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class EtcdTls:
    root_certificate: Path | None = None
    certificate: Path | None = None  # identity.certificate
    key: Path | None = None  # identity.key


@dataclass(frozen=True, kw_only=True, slots=True)
class EtcdCredentials:
    username: str
    password: str


@dataclass(frozen=True, kw_only=True, slots=True)
class EtcdConfig:
    endpoints: tuple[str, ...]  # "host:port" for each url
    secure: bool  # https:// urls
    path: str  # the key prefix, always ending in "/"
    data_format: Literal["json", "yaml"]
    connect_timeout: float
    lease_timeout: float
    cache: CacheConfig
    tls: EtcdTls | None = None
    credentials: EtcdCredentials | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class QuarantineConfig:
    failed_attempt_limit: int
    period: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BasicAuthConfig:
    etcd: EtcdConfig
    cache: CacheConfig
    quarantine: QuarantineConfig | None = None


def build(basic: dict[str, Any], fail: Fail, path: JsonPath) -> BasicAuthConfig:
    """``auth.basic`` as the loader parsed it -> BasicAuthConfig; ``fail(path, problem, fix)``
    reports a problem with the JSON path of the offending value."""
    etcd = basic["etcd"]
    epath = path + ("etcd",)
    endpoints, secure = _endpoints(etcd["urls"], fail, epath + ("urls",))
    tls = None
    if "tls" in etcd:
        raw = etcd["tls"]
        identity = raw.get("identity") or {}
        tls = EtcdTls(root_certificate=raw.get("root_certificate"),
                      certificate=identity.get("certificate"), key=identity.get("key"))
        if not secure:
            fail(epath + ("tls",),
                 "tls is set but the etcd urls are http://, so it would go unused",
                 "write https:// in auth.basic.etcd.urls, or remove auth.basic.etcd.tls")
    prefix = etcd["path"]
    if not prefix.startswith("/"):
        fail(epath + ("path",), f"the etcd key prefix {prefix!r} does not start with /",
             'write it as etcdctl shows keys, e.g. "/users"')
    credentials = None
    if "credentials" in etcd:
        credentials = EtcdCredentials(**etcd["credentials"])
    return BasicAuthConfig(
        etcd=EtcdConfig(
            endpoints=endpoints, secure=secure, path=prefix.rstrip("/") + "/",
            data_format=etcd["data_format"], connect_timeout=etcd["connect_timeout"],
            lease_timeout=etcd["lease_timeout"], cache=_cache(etcd["cache"]), tls=tls,
            credentials=credentials),
        cache=_cache(basic["cache"]),
        quarantine=QuarantineConfig(**basic["quarantine"]) if "quarantine" in basic else None)


def _cache(raw: dict[str, Any]) -> CacheConfig:
    usage = raw.get("usage")
    return CacheConfig(size=raw["size"], usage=CacheUsage(**usage) if usage else None)


def _endpoints(urls: list[str], fail: Fail, path: JsonPath) -> tuple[tuple[str, ...], bool]:
    endpoints = []
    schemes = set()
    for i, url in enumerate(urls):
        parts = urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port or 2379
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            fail(path + (i,), f"{url!r} is not an etcd client URL",
                 'write http://HOST:PORT or https://HOST:PORT, e.g. "https://etcd:2379"')
        schemes.add(parts.scheme)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        endpoints.append(f"{host}:{port}")
    if len(schemes) > 1:
        fail(path, "mixes http:// and https:// urls",
             "use one scheme for all etcd urls (https:// with auth.basic.etcd.tls)")
    return tuple(endpoints), schemes == {"https"}
