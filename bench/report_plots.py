"""The plots of docs/benchmarks.md, drawn with matplotlib's Agg backend
(no display needed): scaling with the number of workers, latency
against payload size, and cost and memory against sessions held."""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib import ticker  # noqa: E402

from summary import (FLOORS, GRPC_CPP, GRPC_PY, MP_APPLY, POOL,  # noqa: E402
                     POOL_VALUE, SCALING_CALL, SCALING_GET, SCALING_RSS,
                     SCALING_STORES, SCALING_UPDATE)

SCALING_PNG = "bench_scaling.png"
PAYLOAD_PNG = "bench_payload.png"
SESSIONS_PNG = "bench_sessions.png"
STYLES = {"same": "-", "default": "--"}
MARKERS = {"same": "o", "default": "s"}
COLORS = ["#444444", "#d62728", "#1f77b4", "#2ca02c", "#9467bd",
          "#ff7f0e"]


def series(summary: dict, placement: str, section: str, name: str,
           x: str, y) -> Tuple[List[float], List[float]]:
    """(xs, ys) of the cells of `name` in `section`, sorted by `x`;
    `y` maps a cell to its figure."""
    cells = [c for c in summary.get(placement, {}).values()
             if c["section"] == section and c["name"] == name]
    points = sorted((c[x], y(c)) for c in cells if y(c))
    return [p[0] for p in points], [p[1] for p in points]


def draw(ax, summary: dict, section: str, names: Dict[str, str], x: str,
         y) -> None:
    for (name, label), color in zip(names.items(), COLORS):
        for placement in ("same", "default"):
            xs, ys = series(summary, placement, section, name, x, y)
            if xs:
                ax.plot(xs, ys, STYLES[placement], color=color,
                        marker=MARKERS[placement], markersize=4,
                        label=f"{label} ({placement})")
    ax.set_xscale("log", base=2 if x == "workers" else 10)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(plain))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def plain(value: float, _pos: int) -> str:
    return f"{value:g}"


def size_label(value: float, _pos: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def per_call_us(cell: dict) -> float:
    cps = cell.get("calls_per_s")
    return 1e6 / cps if cps else 0


def p50(cell: dict) -> float:
    return cell.get("p50_us") or 0


def total_mb(cell: dict) -> float:
    return (cell.get("total_pss_kb") or 0) / 1024


def scaling_plot(summary: dict, path: str) -> None:
    names = {FLOORS["scaling"]: "raw socketpair (floor)",
             POOL: "snakepit Pool", "multiprocessing.Pool.apply_async":
             "multiprocessing.Pool.apply_async"}
    fig, (cost, memory) = plt.subplots(1, 2, figsize=(11, 4.5))
    draw(cost, summary, "scaling", names, "workers", per_call_us)
    cost.set_title("time per call, calls in flight = workers")
    cost.set_xlabel("workers")
    cost.set_ylabel("µs per call (1 / calls per s)")
    draw(memory, summary, "scaling", names, "workers", total_mb)
    memory.set_title("memory: host PSS + sum of worker PSS")
    memory.set_xlabel("workers")
    memory.set_ylabel("MB")
    memory.legend(fontsize=7)
    for ax in (cost, memory):
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(plain))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def payload_plot(summary: dict, path: str) -> None:
    names = {FLOORS["payload"]: "raw socketpair (floor)",
             POOL: "snakepit Pool, msgpack bytes",
             POOL_VALUE: "snakepit Pool, Value",
             MP_APPLY: MP_APPLY, GRPC_PY: "gRPC → Python grpcio",
             GRPC_CPP: "gRPC → bare C++ server"}
    fig, ax = plt.subplots(figsize=(8, 5))
    draw(ax, summary, "payload", names, "payload_bytes",
         lambda c: (c.get("p50_us") or 0) / 1e3)
    ax.set_xticks([100, 64 << 10, 1 << 20, 16 << 20, 64 << 20])
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(size_label))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_title("one call in flight, payload echoed back (p50)")
    ax.set_xlabel("payload bytes, each way")
    ax.set_ylabel("ms per call")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def session_line(ax, summary: dict, name: str, y, label: str, color: str,
                 style: str) -> None:
    """One row of the session scaling section (default placement, the
    only one it runs in) against the sessions held; points where `y` is
    not positive are left out, a log axis having no place for them."""
    xs, ys = series(summary, "default", "session_scaling", name,
                    "sessions", lambda c: max(0.0, y(c)))
    if xs:
        ax.plot(xs, ys, style, color=color, marker="o", markersize=4,
                label=label)


def sessions_plot(summary: dict, path: str) -> None:
    fig, (cost, memory) = plt.subplots(1, 2, figsize=(11, 5.2))
    for (store, label), style in zip(SCALING_STORES.items(), ("-", "--")):
        session_line(cost, summary, label + SCALING_GET, p50,
                     f"{store} Get", COLORS[1], style)
        session_line(cost, summary, label + SCALING_UPDATE, p50,
                     f"{store} Update", COLORS[2], style)
        rss = label + SCALING_RSS
        session_line(memory, summary, rss,
                     lambda c: (c.get("host_rss_kb") or 0) / 1024,
                     f"{store}: host RSS", COLORS[0], style)
        session_line(memory, summary, rss,
                     lambda c: (c.get("rss_delta_kb") or 0) / 1024,
                     f"{store}: growth over no session", COLORS[3], style)
    session_line(cost, summary, SCALING_CALL, p50,
                 "Pool call in a session (memory)", COLORS[4], "-")
    cost.set_title("per operation, p50; solid memory, dashed sqlite")
    cost.set_ylabel("µs")
    memory.set_title("host memory; solid memory store, dashed sqlite")
    memory.set_ylabel("MB")
    for ax in (cost, memory):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sessions held")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(plain))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(plain))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        # Below the axes: the lines span the whole width.
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", ncol=2,
                      bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(summary: dict, out_dir: str) -> List[Tuple[str, str]]:
    """Draws the plots into `out_dir`; returns (file name, caption)."""
    scaling_plot(summary, os.path.join(out_dir, SCALING_PNG))
    payload_plot(summary, os.path.join(out_dir, PAYLOAD_PNG))
    sessions_plot(summary, os.path.join(out_dir, SESSIONS_PNG))
    return [(SCALING_PNG, "Scaling from 1 to 64 workers"),
            (PAYLOAD_PNG, "Latency against payload size"),
            (SESSIONS_PNG, "Cost and host memory against sessions held")]
