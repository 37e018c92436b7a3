"""Cross-field checks: rules about several keys of one object, run after its keys are parsed.

Each is an ``Obj`` post hook ``(kwargs, ctx, path)`` that may fail, warn, or complete
``kwargs`` before the object is built. Upstream applies the same rules where noted.
"""

from __future__ import annotations

from typing import Any

from mgfast.config.model import Listen
from mgfast.config.validation import Ctx, JsonPath, seconds_text, short


def exactly_one_period(kw: dict[str, Any], ctx: Ctx, path: JsonPath) -> None:
    """``statistics``: upstream refuses to start unless exactly one period is given."""
    given = [k for k in ("frame_period", "timestamp_period") if k in kw]
    if len(given) != 1:
        ctx.fail(path, "has both frame_period and timestamp_period" if given
                 else "has neither frame_period nor timestamp_period",
                 'keep exactly one: "frame_period": 1000 (frames) or '
                 '"timestamp_period": {"secs": 1, "nanos": 0}')


def retry_delays(kw: dict[str, Any], ctx: Ctx, path: JsonPath) -> None:
    """``retry_strategy.exponential``: initial <= maximum, as upstream; a zero initial delay
    never grows (upstream multiplies it), so retries would not wait at all."""
    if kw["initial_delay"] > kw["maximum_delay"]:
        ctx.fail(path + ("initial_delay",),
                 f"initial_delay ({seconds_text(kw['initial_delay'])}) is longer than "
                 f"maximum_delay ({seconds_text(kw['maximum_delay'])})",
                 "make initial_delay at most maximum_delay, e.g. 1 ms and 1 s")
    if kw["initial_delay"] == 0:
        ctx.warn(path + ("initial_delay",),
                 "initial_delay 0 stays 0 when multiplied, so failed sends are retried at once, "
                 "forever, without backing off",
                 'write a delay above zero, e.g. {"secs": 0, "nanos": 1000000}')


def permissions_need_bind(kw: dict[str, Any], ctx: Ctx, path: JsonPath) -> None:
    """``fix_ipc_permissions`` on a connecting socket: Savant's config builder refuses it."""
    if "fix_ipc_permissions" in kw and not kw["url"].bind:
        ctx.fail(path + ("fix_ipc_permissions",),
                 f"the socket {kw['url']} connects, and permissions apply only to a socket file "
                 f"this process binds (Savant refuses this too)",
                 "remove fix_ipc_permissions, or bind the socket (type+bind:...)")


def finish_listener(kw: dict[str, Any], ctx: Ctx, path: JsonPath) -> None:
    """Top level: build ``metrics`` (default ip = the gateway's), keep it off the gateway port."""
    metrics = kw.get("metrics")
    if metrics is not None:
        if metrics["port"] == kw["port"] and kw["port"] != 0:
            ctx.fail(path + ("metrics", "port"),
                     f"the metrics listener would share port {kw['port']} with the gateway",
                     "pick another port for metrics, e.g. " + str(9000 + kw["port"] % 1000))
        kw["metrics"] = Listen(ip=metrics.get("ip", kw["ip"]), port=metrics["port"])
    kw["source"] = ctx.file
    kw.pop("strict", None)  # read by the loader before the schema ran


def finish_client(kw: dict[str, Any], ctx: Ctx, path: JsonPath) -> None:
    """Client top level: as :func:`finish_listener`; ``tls`` with a plain-http url is unused."""
    finish_listener(kw, ctx, path)
    if "tls" in kw and kw["url"].lower().startswith("http://"):
        ctx.warn(path + ("tls",),
                 f"tls is set but url {short(kw['url'])} is plain http, so the certificates go "
                 f"unused",
                 "write https:// in url, or remove the tls section")
