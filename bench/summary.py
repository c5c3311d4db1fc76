"""The figures of bench/run, keyed and summarised: shared by report.py,
which writes the report, and compare, which sets two runs side by side.

A result line (bench/bench_util.h) is keyed by its section, its name and
its parameters (workers, in_flight, payload_bytes, sessions). Each key's
figures are the median over rounds. "× floor" is the ratio of a line's
cost to the floor's cost measured in the same round and placement, then
the median of those ratios: the machine is shared and noisy, so only figures
taken close together compare fairly.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Callable, Dict, List, Optional

# The names the benchmarks print, for the rows the report singles out.
POOL = "snakepit Pool, msgpack bytes in and out"
POOL_VALUE = "snakepit Pool, Value in and out"
POOL_START = "snakepit Pool, exec start, module imports numpy"
ZYGOTE_START = "snakepit Zygote.Fork, module imports numpy"
MP_APPLY = "multiprocessing.Pool.apply"
GRPC_PY = "gRPC to a Python grpcio server (4 threads)"
GRPC_CPP = "gRPC to a bare C++ gRPC echo server"
NODE = "snakepit node, gRPC Call (1 worker)"
# The session rows (bench/session_bench.cc).
MEMORY_GET = "session store memory, Get"
SESSION_PLAIN = "Pool call, plain echo (bench_echo.echo)"
SESSION_NONE = "Pool call, echo taking a Context, no session"
SESSION_IN = "Pool call, echo taking a Context, in a session (memory store)"
# Appended to a gRPC row's name for the same call over a unix socket.
UNIX = ", unix socket"
# The session scaling rows (session_bench scaling), one per store and
# count of sessions held: the store's label, then what was measured.
SCALING_STORES = {"memory": "session store memory",
                  "sqlite": "session store sqlite (synchronous=NORMAL)"}
SCALING_GET = ", Get of a random session"
SCALING_UPDATE = ", Update of a counter in a random session"
SCALING_RSS = ", host RSS"
SCALING_CALL = "Pool call in a session, reading ctx.session (memory store)"

PARAMS = ("workers", "in_flight", "payload_bytes", "sessions")
FLOORS = {
    "latency": "raw socketpair echo (floor)",
    "payload": "raw socketpair echo (floor)",
    "throughput": "raw socketpair echo, one call per worker (floor)",
    "scaling": "raw socketpair echo, one call per worker (floor)",
    "startup": "exec python3 + import numpy, N at once (floor)",
}


def key_of(row: dict) -> str:
    parts = [row["section"], row["name"]]
    parts += [f"{p}={row[p]}" for p in PARAMS if p in row]
    return " | ".join(parts)


def floor_key(row: dict) -> Optional[str]:
    name = FLOORS.get(row["section"])
    return key_of({**row, "name": name}) if name else None


def cost(row: dict) -> Optional[float]:
    """What "× floor" compares: time per call, or time to start."""
    section = row["section"]
    if section in ("latency", "payload"):
        return row.get("p50_us")
    if section in ("throughput", "scaling"):
        cps = row.get("calls_per_s")
        return 1.0 / cps if cps else None
    return row.get("ready_ms")


def load(raw_dir: str) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """{placement: {round: {key: row}}} from the files of bench/run."""
    rounds: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for name in sorted(os.listdir(raw_dir)):
        stem = name.rsplit(".", 1)[0]
        round_name, placement = stem.split("_", 1)
        with open(os.path.join(raw_dir, name)) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        by_key = rounds.setdefault(placement, {}).setdefault(round_name, {})
        for row in rows:
            by_key[key_of(row)] = row
    return rounds


def ratio_in_round(rows: Dict[str, dict], key: str) -> Optional[float]:
    row = rows.get(key)
    floor = rows.get(floor_key(row) or "") if row else None
    if not row or not floor:
        return None
    a, b = cost(row), cost(floor)
    return a / b if a and b else None


def median_of(values: List[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise_key(by_round: Dict[str, Dict[str, dict]], key: str) -> dict:
    rows = [r[key] for r in by_round.values() if key in r]
    cell = {k: rows[0][k] for k in ("section", "name", *PARAMS)
            if k in rows[0]}
    numeric = sorted({k for r in rows for k, v in r.items()
                      if isinstance(v, (int, float)) and k not in PARAMS})
    for k in numeric:
        cell[k] = median_of([r.get(k) for r in rows])
    cell["x_floor"] = median_of(
        [ratio_in_round(r, key) for r in by_round.values()])
    cell["rounds"] = len(rows)
    return cell


def summarise(rounds: dict) -> Dict[str, Dict[str, dict]]:
    summary = {}
    for placement, by_round in rounds.items():
        keys = []
        for rows in by_round.values():
            keys += [k for k in rows if k not in keys]
        summary[placement] = {k: summarise_key(by_round, k) for k in keys}
    return summary


def paired(rounds: dict, placement: str,
           fn: Callable[[Dict[str, dict]], Optional[float]]
           ) -> Optional[float]:
    """Median over the rounds of `placement` of `fn(rows of a round)`."""
    by_round = rounds.get(placement, {})
    return median_of([fn(rows) for rows in by_round.values()])


