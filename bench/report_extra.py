"""Markdown and text of the handshakes, backpressure and metrics-cost sections of RESULTS.md.

Each section carries its own command, date and background load: ``python -m bench --parts X``
re-runs only X and keeps the other sections from the previous ``results.json``.
"""

from __future__ import annotations

from bench.report import _f, markdown

KEYS = ("handshakes", "backpressure", "metrics_cost")


def _when(section: dict) -> list[str]:
    meta = section["meta"]
    m = meta["machine"]
    return [
        f"- command: `{meta['command']}` (from the repository root)",
        f"- date: {meta['date']}; machine: {m['nproc']} CPUs ({m['cpu']}), {m['openssl']}, "
        f"one system call {m['syscall_us']} us" + ("; **quick run**" if meta.get("quick") else ""),
    ]


def _background(b: dict | None) -> str:
    if not b:
        return "-"
    return f"{b['busy_cpus']:.2f}" + ("" if b.get("quiet", True) else " (busy)")


def _error_section(title: str, section: dict) -> list[str]:
    return [f"## {title}", "", *_when(section), "", f"failed: {section['error'][:500]}", ""]


# ---- handshakes ----------------------------------------------------------------------------------

def handshakes_rows(section: dict) -> tuple[list[str], list[list[str]]]:
    header = ["server", "round", "handshakes/s", "server CPU us/handshake",
              "client CPU us/handshake", "p50 / p99 ms", "failed", "resumed", "tickets",
              "machine busy (others)", "background before"]
    rows = []
    for r in section["rounds"]:
        rows.append([r["target"], str(r["round"]), _f(r["handshakes_per_s"]),
                     _f(r["server_cpu_us_per_hs"]), _f(r["client_cpu_us_per_hs"]),
                     f"{_f(r['p50_ms'], 1)} / {_f(r['p99_ms'], 1)}", str(r["failed"]),
                     str(r["reused"]), str(r.get("tickets", "-")),
                     f"{_f(r['machine_busy_cpus'], 2)} ({_f(r['other_cpus'], 2)})",
                     _background(r["background"])])
    s = section["summary"]
    for name in ("mgfast", "nginx", "mgfast-resumed"):
        if name not in s:  # results from before the resumed measurement
            continue
        rows.append([f"**{name} mean**", "", f"**{_f(s[name]['handshakes_per_s'])}**",
                     f"**{_f(s[name]['server_cpu_us_per_hs'])}**", "", "",
                     str(s[name]["failed"]), str(s[name]["reused"]),
                     str(s[name].get("tickets", "-")), "", ""])
    return header, rows


def handshakes_markdown(section: dict) -> list[str]:
    title = ("Mutual-TLS handshakes: mgfast server vs nginx, a new connection per request; "
             "mgfast with session resumption")
    if "error" in section:
        return _error_section(title, section)
    o, s = section["options"], section["summary"]
    tls = next((r["tls"] for r in section["rounds"] if r.get("tls")), "?")
    revoked = section["revoked"]
    out = [
        f"## {title}", "",
        *_when(section),
        f"- both servers: the seed guide's certificates (RSA 2048), client certificate required "
        f"and checked against the CA and its CRL (one revoked entry), {o['workers']} workers "
        f"(mgfast `workers`, nginx `worker_processes`); {section['nginx']}; negotiated {tls}; "
        f"no session tickets from either (mgfast's default; nginx `ssl_session_tickets off` and "
        f"`ssl_conf_command NumTickets 0`): "
        f"the *tickets* column counts exchanges in which the server sent one",
        f"- load: {o['clients']} Python client processes, each: new TCP connection, full "
        f"handshake with the client certificate (no session offered, tickets off), "
        f"`GET /health` (`Connection: close`), the whole 200, close; counted over "
        f"{o['window_s']:g} s after {o['warmup_s']:g} s of warm-up; rounds: {o['rounds']}, "
        f"alternating mgfast / nginx, each after waiting for a quiet machine",
        f"- *mgfast-resumed*: a second mgfast server, the same plus `tls.session_tickets` "
        f"{{`enabled`: true}}; each client offers the session of its previous exchange (its "
        f"first is a full handshake), so *resumed* counts the resumed handshakes",
        "",
        markdown(*handshakes_rows(section)),
        "",
        f"**mgfast / nginx: {_f(s['ratio'], 2)}x handshakes/s, {_f(s['cpu_ratio'], 2)}x server "
        f"CPU per handshake.** Server CPU: the whole process tree (mgfast: supervisor, egress, "
        f"workers; nginx: master, workers) over the window, per completed exchange. Client "
        f"CPU: the load generator processes. Both share the machine's "
        f"{section['meta']['machine']['nproc']} CPUs, so handshakes/s is bounded by client "
        f"and server together; CPU per handshake is each server's own cost. *machine busy*: "
        f"CPUs busy during the window, in parentheses what was neither server nor load "
        f"generator; *background before*: CPUs busy in the second before the round started.",
        "",
        *([f"**mgfast resumed / mgfast full: {_f(s['resumed_rate_ratio'], 2)}x handshakes/s, "
           f"{_f(s['resumed_cpu_ratio'], 2)}x server CPU per handshake.** A resumed handshake "
           f"skips the certificate exchange (no RSA signature or verification on either side) "
           f"and still re-checks the client certificate against the store.", ""]
          if "resumed_cpu_ratio" in s else []),
        "Revoked client certificate (fairness check, before the load): "
        + "; ".join(f"{name} {'**rejected**' if c['rejected'] else '**ACCEPTED**'} "
                    f"({c['how']}; the valid certificate: HTTP {c['valid_cert_status']})"
                    for name, c in revoked.items()) + ".",
        "",
        "Peak RSS (sum of VmHWM over the tree): "
        + ", ".join(f"{name} {_f(v)} MiB ({section['processes'][name]} processes)"
                    for name, v in section["peak_rss_mib"].items()) + ".",
        "",
    ]
    return out


# ---- backpressure --------------------------------------------------------------------------------

def _statuses(counts: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) or "-"


def backpressure_rows(section: dict) -> tuple[list[str], list[list[str]]]:
    header = ["server", "procs", "responses", "statuses", "idle RSS MiB",
              "max reading", "max stalled", "after", "stall slope MiB/s", "504 p50 / p99 ms",
              "consumer read", "background before"]
    rows = []
    for r in section["runs"]:
        if "error" in r:
            rows.append([r["label"], "failed: " + r["error"].splitlines()[0][:100]]
                        + [""] * (len(header) - 2))
            continue
        rows.append([r["label"], str(r["processes"]), f"{r['requests']:,}",
                     _statuses(r["statuses"]), _f(r["baseline_rss_mib"]),
                     _f(r["reading_max_rss_mib"]), _f(r["stall_max_rss_mib"]),
                     _f(r["end_rss_mib"]), _f(r["stall_slope_mib_per_s"], 2),
                     f"{_f(r['stall_504_p50_ms'])} / {_f(r['stall_504_p99_ms'])}",
                     _f(r["consumed"]), _background(r["background"])])
    return header, rows


def backpressure_samples(section: dict) -> tuple[list[str], list[list[str]]]:
    runs = [r for r in section["runs"] if "error" not in r]
    header = ["t s"]
    for r in runs:
        header += [f"{r['label']} RSS MiB", f"{r['label']} responses in the slot"]
    length = max((len(r["samples"]) for r in runs), default=0)
    rows = []
    for i in range(length):
        first = next(r["samples"][i] for r in runs if i < len(r["samples"]))
        t = first["t"]
        row = [f"{t:.1f}"]
        for r in runs:
            if i < len(r["samples"]):
                s = r["samples"][i]
                row += [_f(s["rss_mib"], 1), _statuses(s["statuses"])]
            else:
                row += ["", ""]
        rows.append(row)
    return header, rows


def backpressure_markdown(section: dict) -> list[str]:
    title = "Back-pressure: memory when the consumer stops reading"
    if "error" in section:
        return _error_section(title, section)
    o = section["options"]
    runs = [r for r in section["runs"] if "error" not in r]
    stall = runs[0]["stall_at_s"] if runs else o["read_s"]
    out = [
        f"## {title}", "",
        *_when(section),
        f"- server: plain HTTP, out_stream `dealer+connect` over ipc, `send_hwm` "
        f"{o['send_hwm']}, `send_timeout` {o['send_timeout_ms']} ms, `send_retries` "
        f"{o['send_retries']} (a {o['send_timeout_ms'] * (o['send_retries'] + 1)} ms budget "
        f"per message), `inflight_ops` default; consumer: a pyzmq ROUTER, `RCVHWM` 1, "
        f"64 KiB receive buffer, reading for {o['read_s']:g} s, then never again (socket "
        f"kept open)",
        f"- load: {o['connections']} keep-alive connections, one `POST /` of "
        f"{o['body_bytes']:,} B in flight each, for {o['load_s']:g} s; RSS = sum of `VmRSS` "
        f"over the server's process tree, sampled every {o['sample_s']:g} s",
        "",
        markdown(*backpressure_rows(section)),
        "",
        "*stall slope*: least-squares slope of the RSS over the second half of the stalled "
        "phase (0 = flat). *504 p50 / p99*: response time of the 504s once stalled. "
        "*consumer read*: messages the ROUTER took before it stopped.",
        "",
    ]
    if section.get("chart"):
        out += [f"![backpressure]({section['chart']})", ""]
    out += [
        f"RSS samples (t = 0: the load starts; t = {stall:g}: the consumer stops reading; "
        f"t = {o['load_s']:g}: no new requests); responses counted in the 0.5 s before each "
        f"sample:",
        "",
        markdown(*backpressure_samples(section)),
        "",
    ]
    return out


# ---- metrics cost --------------------------------------------------------------------------------

def metrics_rows(section: dict) -> tuple[list[str], list[list[str]]]:
    header = ["run", "metrics", "req/s", "mean ms", "server CPU us/req", "non-2xx",
              "machine busy", "background before"]
    rows = [[str(r["run"]), r["metrics"], _f(r["req_per_s"]), _f(r["mean_ms"], 2),
             _f(r["cpu_us_per_req"], 1), str(r["not_ok"]), _f(r["machine_busy_cpus"], 2),
             _background(r["background"])] for r in section["runs"]]
    s = section["summary"]
    for label in ("on", "off"):
        rows.append(["**mean**", f"**{label}**", f"**{_f(s[label]['req_per_s_mean'])}**", "",
                     f"**{_f(s[label]['cpu_us_per_req_mean'], 1)}**", str(s[label]["not_ok"]),
                     "", ""])
    return header, rows


def metrics_markdown(section: dict) -> list[str]:
    title = "Metrics on vs off: server throughput"
    if "error" in section:
        return _error_section(title, section)
    o, s = section["options"], section["summary"]
    rates = {label: [r["req_per_s"] for r in section["runs"] if r["metrics"] == label]
             for label in ("on", "off")}
    spread = ("Run-to-run spread: " + ", ".join(
        f"{label} {_f(min(v))}-{_f(max(v))} req/s ({_f(100 * (max(v) - min(v)) / max(v), 0)}%)"
        for label, v in rates.items() if v) + ".")
    out = [
        f"## {title}", "",
        *_when(section),
        f"- two identical `mgfast server`s (plain HTTP, workers "
        f"{o['workers'] or 'default'}, out_stream `pub+bind` with no subscriber), one with "
        f"`\"metrics\": {{\"ip\": \"127.0.0.1\", \"port\": ...}}`; h2load, "
        f"{o['requests']:,} `POST /` of {o['body_bytes']} B over {o['connections']} "
        f"keep-alive connections per run, alternating on / off, {o['rounds']} runs each, "
        f"after a warm-up of {o['warmup']:,} requests on each",
        f"- h2load command: `{section.get('command', '?')}` ({section.get('h2load', '')})",
        "",
        markdown(*metrics_rows(section)),
        "",
        f"**Cost of metrics: {_f(s['throughput_cost_pct'], 1)}% req/s (means; medians "
        f"{_f(s['throughput_cost_median_pct'], 1)}%), {_f(s['cpu_cost_pct'], 1)}% server CPU "
        f"per request** (1 - on/off; negative = faster with metrics). {spread}",
        "",
    ]
    during, after = section.get("scrape_during"), section.get("scrape_after")
    if during or after:
        out += [f"`/metrics` scraped during the first run with metrics "
                f"({section.get('scrape_after_s', '?')} s into the load; the counters include "
                f"the warm-up) and 1.5 s after it:", "",
                "| series | mid-load | after |", "|---|---:|---:|"]
        for name in sorted(set(during or {}) | set(after or {})):
            out.append(f"| `{name}` | {(during or {}).get(name, '-')} | "
                       f"{(after or {}).get(name, '-')} |")
        out += ["", f"({section.get('scrape_series', '?')} samples in the whole scrape.)", ""]
    return out


# ---- all of them ---------------------------------------------------------------------------------

def markdown_sections(extras: dict) -> str:
    out: list[str] = []
    if extras.get("handshakes"):
        out += handshakes_markdown(extras["handshakes"])
    if extras.get("backpressure"):
        out += backpressure_markdown(extras["backpressure"])
    if extras.get("metrics_cost"):
        out += metrics_markdown(extras["metrics_cost"])
    return "\n".join(out)


def summary_lines(extras: dict) -> list[str]:
    """One line per section, for the terminal."""
    lines = []
    hs = extras.get("handshakes")
    if hs and "error" not in hs:
        s = hs["summary"]
        lines.append(f"handshakes: mgfast {_f(s['mgfast']['handshakes_per_s'])}/s, nginx "
                     f"{_f(s['nginx']['handshakes_per_s'])}/s ({_f(s['ratio'], 2)}x); server CPU "
                     f"{_f(s['mgfast']['server_cpu_us_per_hs'])} vs "
                     f"{_f(s['nginx']['server_cpu_us_per_hs'])} us/handshake; failed "
                     f"{s['mgfast']['failed']} / {s['nginx']['failed']}")
        if "mgfast-resumed" in s:
            r = s["mgfast-resumed"]
            lines.append(f"handshakes resumed (mgfast): {_f(r['handshakes_per_s'])}/s, server CPU "
                         f"{_f(r['server_cpu_us_per_hs'])} us/handshake "
                         f"({_f(s['resumed_cpu_ratio'], 2)}x full), {r['reused']} of {r['ok']} "
                         f"resumed")
    bp = extras.get("backpressure")
    if bp and "error" not in bp:
        for r in bp["runs"]:
            if "error" in r:
                lines.append(f"backpressure {r['label']}: failed")
                continue
            lines.append(f"backpressure {r['label']}: RSS {_f(r['baseline_rss_mib'])} MiB idle, "
                         f"peak {_f(r['peak_rss_mib'])}, slope "
                         f"{_f(r['stall_slope_mib_per_s'], 2)} MiB/s; {_statuses(r['statuses'])}")
    mc = extras.get("metrics_cost")
    if mc and "error" not in mc:
        s = mc["summary"]
        lines.append(f"metrics: on {_f(s['on']['req_per_s_mean'])} req/s, off "
                     f"{_f(s['off']['req_per_s_mean'])} req/s, cost "
                     f"{_f(s['throughput_cost_pct'], 1)}% (CPU/req {_f(s['cpu_cost_pct'], 1)}%)")
    for key in KEYS:
        if extras.get(key) and "error" in extras[key]:
            lines.append(f"{key}: failed: {extras[key]['error'].splitlines()[0][:200]}")
    return lines
