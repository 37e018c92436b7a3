"""Tables (plain text and Markdown) and the chart of a benchmark run."""

from __future__ import annotations

import math
from pathlib import Path

PATH_ORDER = ("direct", "stunnel")  # then the mgfast variants, in run order


def _f(value, digits: int = 0, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _ratio(a, b) -> str:
    if not a or not b or any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return "-"
    return f"{a / b:.2f}x"


def transport(r: dict) -> str:
    """The ZeroMQ transport of a pipeline result (results from before the option were ipc)."""
    return r.get("transport", "ipc")


def _by(results: list[dict], like: dict, path: str) -> dict | None:
    """The result of ``path`` with the same size and transport as ``like``."""
    return next((r for r in results if r["size"] == like["size"] and r["path"] == path
                 and transport(r) == transport(like) and "error" not in r), None)


def _cpu(r: dict) -> str:
    """Gateway CPU per message, with the share of each top-level process (tree) when several,
    and of each server child (``server:egress``) within its tree's."""
    total = _f(r["cpu_us_per_msg"], 1)
    split = r.get("cpu_split_us_per_msg") or {}
    top = {name: v for name, v in split.items() if ":" not in name}
    if len(top) < 2:
        return total

    def share(name: str, v: float) -> str:
        children = [f"{child.partition(':')[2]} {_f(cv, 1)}" for child, cv in split.items()
                    if child.startswith(name + ":")]
        inner = f" [{', '.join(children)}]" if len(children) > 1 else ""
        return f"{name.replace('stunnel-', 'st-')} {_f(v, 0)}{inner}"

    return total + " (" + " + ".join(share(name, v) for name, v in top.items()) + ")"


# ---- tables ----------------------------------------------------------------------------------------

def pipeline_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["size", "transport", "path", "msg/s", "MB/s", "vs direct", "load p50 / p99 ms",
              "paced p50 / p99 ms", "gateway CPU us/msg", "peak RSS MiB", "procs",
              "machine busy (others)", "lost / dup"]
    rows = []
    for r in results:
        size = f"{r['size']} ({r['payload']:,} B)"
        if "error" in r:
            rows.append([size, transport(r), r["label"],
                         "failed: " + r["error"].splitlines()[0][:80]]
                        + [""] * (len(header) - 4))
            continue
        direct = _by(results, r, "direct")
        rows.append([
            size, transport(r), r["label"], _f(r["msgs_per_s"]), _f(r["mb_per_s"], 1),
            "-" if r["path"] == "direct" else _ratio(r["msgs_per_s"],
                                                     direct and direct["msgs_per_s"]),
            f"{_f(r['load_p50_ms'], 1)} / {_f(r['load_p99_ms'], 1)}",
            f"{_f(r['paced_p50_ms'], 2)} / {_f(r['paced_p99_ms'], 2)} @{r['paced_rate']}/s",
            _cpu(r), _f(r["peak_rss_mib"], 0),
            str(r["processes"]) if r["processes"] else "-",
            f"{_f(100 * r['machine_busy'], 0, '%')} ({_f(r.get('other_cores'), 2)})",
            f"{r['lost'] + r['paced_lost']} / {r['duplicates']}",
        ])
    return header, rows


def ratio_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["size", "transport", "mgfast", "msg/s vs direct", "msg/s vs stunnel",
              "CPU/msg vs stunnel", "paced p99 vs stunnel", "paced p99 vs direct"]
    rows = []
    for r in results:
        if not r["path"].startswith("mgfast") or "error" in r:
            continue
        direct, stunnel = _by(results, r, "direct"), _by(results, r, "stunnel")
        rows.append([
            r["size"], transport(r), r["label"],
            _ratio(r["msgs_per_s"], direct and direct["msgs_per_s"]),
            _ratio(r["msgs_per_s"], stunnel and stunnel["msgs_per_s"]),
            _ratio(r["cpu_us_per_msg"], stunnel and stunnel["cpu_us_per_msg"]),
            _ratio(r["paced_p99_ms"], stunnel and stunnel["paced_p99_ms"]),
            _ratio(r["paced_p99_ms"], direct and direct["paced_p99_ms"]),
        ])
    return header, rows


def server_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["body", "requests x conns", "req/s", "MB/s", "mean / max ms",
              "server CPU us/req", "peak RSS MiB", "procs", "non-2xx"]
    rows = [[f"{r['size']} ({r['body']:,} B)", f"{r['requests']:,} x {r['connections']}",
             _f(r["req_per_s"]), _f(r["mb_per_s"], 1),
             f"{_f(r['mean_ms'], 2)} / {_f(r['max_ms'], 1)}", _f(r["cpu_us_per_req"], 1),
             _f(r["peak_rss_mib"], 0), str(r["processes"]), str(r["not_ok"])]
            for r in results]
    return header, rows


def markdown(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    """A Markdown table: the first ``left`` columns (names) left-aligned, the figures right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


# ---- chart -----------------------------------------------------------------------------------------

def chart(pipeline: list[dict], server: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in pipeline if "error" not in r]
    several = len({transport(r) for r in ok}) > 1

    def group(r: dict) -> str:  # one bar group per path, and per transport if there are several
        return f"{r['label']} [{transport(r)}]" if several else r["label"]

    labels = []
    for r in ok:
        if group(r) not in labels:
            labels.append(group(r))
    colors = {"direct": "#8c8c8c", "stunnel": "#4c72b0"}

    def color(label: str) -> str:
        key = next((r["path"] for r in ok if group(r) == label), "")
        return colors.get(key, "#dd8452" if key.endswith("b1") else "#c44e52")

    fig, axes = plt.subplots(2, 2, figsize=(18, 9) if several else (12, 8))
    panels = [
        (axes[0][0], "small", "msgs_per_s", "messages/s, small (200 B) (log)", False),
        (axes[0][1], "large", "mb_per_s", "MB/s, large (100 KiB)", False),
        (axes[1][0], None, "cpu_us_per_msg", "gateway CPU us per message (log)", True),
        (axes[1][1], None, "paced_p99_ms", "p99 latency at a fixed rate, ms (log)", True),
    ]
    for ax, size, key, name, both in panels:
        ax.set_title(name, fontsize=10)
        sizes = ["small", "large"] if both else [size]
        width = 0.8 / len(sizes)
        for j, s in enumerate(sizes):
            xs, ys, cs = [], [], []
            for i, label in enumerate(labels):
                r = next((r for r in ok if group(r) == label and r["size"] == s), None)
                value = r and r.get(key)
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                xs.append(i + (j - (len(sizes) - 1) / 2) * width)
                ys.append(value)
                cs.append(color(label))
            bars = ax.bar(xs, ys, width=width * 0.95, color=cs,
                          hatch="//" if both and s == "large" else None, edgecolor="white")
            for bar, y in zip(bars, ys):
                ax.annotate(f"{y:,.0f}" if y >= 10 else f"{y:.2f}",
                            (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=7)
        if both or key == "msgs_per_s":
            ax.set_yscale("log")
        if both:
            ax.bar([0], [0], color="#bbbbbb", label="small")
            ax.bar([0], [0], color="#bbbbbb", hatch="//", edgecolor="white", label="large")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8, rotation=30 if several else 0,
                           ha="right" if several else "center")
        ax.margins(y=0.15)
    if server:
        note = "server alone (h2load, HTTPS keep-alive): " + ", ".join(
            f"{r['size']} {r['req_per_s']:,.0f} req/s" for r in server)
        fig.text(0.5, 0.005, note, ha="center", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
