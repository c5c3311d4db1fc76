"""The text of docs/benchmarks.md: one table per section with every peer
beside Snakepit and its ratio to the floor, then the targets."""

from __future__ import annotations

import textwrap
from typing import Callable, Dict, List, Optional

import summary as results
from summary import (FLOORS, GRPC_CPP, GRPC_PY, MEMORY_GET, MP_APPLY, NODE,
                     POOL, POOL_START, POOL_VALUE, SCALING_CALL, SCALING_GET,
                     SCALING_RSS, SCALING_STORES, SCALING_UPDATE, SESSION_IN,
                     SESSION_NONE, SESSION_PLAIN, UNIX, ZYGOTE_START)

PLACEMENTS = ("same", "default")
PLACEMENT_TEXT = {
    "same": "same CPU (`taskset -c 0`)",
    "default": "default (the scheduler's placement)",
}
MP_ASYNC = "multiprocessing.Pool.apply_async"
PIPELINED = "raw socketpair echo, pipelined"
CLI = "snakepit CLI one-shot (whole process)"
PY_PASS = "python3 -c pass (whole process)"
# Display order of the rows of each section; others follow as found.
ORDER = [
    FLOORS["latency"], FLOORS["throughput"], FLOORS["startup"], POOL,
    POOL_VALUE, POOL_START, ZYGOTE_START, PIPELINED, MP_APPLY, MP_ASYNC,
    "ProcessPoolExecutor.submit", GRPC_PY, GRPC_CPP, NODE, GRPC_PY + UNIX,
    GRPC_CPP + UNIX, NODE + UNIX,
    "multiprocessing.Pool, spawn (exec), imports numpy",
    "multiprocessing.Pool, forkserver with numpy preloaded",
    "multiprocessing.Pool, fork of a host that imported numpy",
    CLI, PY_PASS,
]


def para(*words: str) -> List[str]:
    """One paragraph wrapped at 79 columns, then a blank line."""
    return [textwrap.fill(" ".join(words), 79, break_on_hyphens=False,
                          break_long_words=False), ""]


def bullets(items: List[str]) -> List[str]:
    lines = [textwrap.fill(item, 79, initial_indent="- ",
                           subsequent_indent="  ", break_on_hyphens=False,
                           break_long_words=False) for item in items]
    return lines + [""]


def num(x: Optional[float]) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def times(r: Optional[float]) -> str:
    return "–" if r is None else f"{num(r)}×"


def size(b: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale and b % scale == 0:
            return f"{b // scale} {unit}"
    return f"{b} B"


def cells(summary: dict, placement: str, section: str) -> List[dict]:
    found = [c for c in summary.get(placement, {}).values()
             if c["section"] == section]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda c: rank.get(c["name"], len(ORDER)))


def names(found: List[dict]) -> List[str]:
    out: List[str] = []
    for c in found:
        if c["name"] not in out:
            out.append(c["name"])
    return out


def table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def grid(found: List[dict], param: str, cell: Callable[[dict], str],
         label: Callable[[int], str]) -> List[str]:
    """A table with a row per name and a column per value of `param`."""
    points = sorted({c[param] for c in found})
    by = {(c["name"], c[param]): c for c in found}
    rows = [[n] + [cell(by[(n, p)]) if (n, p) in by else "–"
                   for p in points] for n in names(found)]
    return table(["what"] + [label(p) for p in points], rows)


# The sections of the report, each a list of markdown lines.

def latency(summary: dict) -> List[str]:
    lines = ["## 1. One small call in flight", ""] + para(
        "100 bytes in, 100 bytes out, one call at a time. The CLI rows",
        "time a whole process: start, a pool of one worker, one call,",
        "exit.")
    for placement in PLACEMENTS:
        rows = [[c["name"], num(c.get("p50_us")), num(c.get("p99_us")),
                 num(c.get("calls_per_s")), times(c.get("x_floor"))]
                for c in cells(summary, placement, "latency")]
        if rows:
            lines += [f"**{PLACEMENT_TEXT[placement]}**", ""]
            lines += table(["what", "p50 µs", "p99 µs", "calls/s",
                            "× floor (p50)"], rows)
    return lines


def throughput(summary: dict) -> List[str]:
    lines = ["## 2. Throughput: 64 calls in flight", ""] + para(
        "The caller keeps 64 calls submitted and collects them in order.",
        "The Pool runs one call per worker and queues the rest, so its",
        "floor is raw echo workers driven the same way, one frame per",
        "worker at a time. The pipelined row queues 64 / N frames on",
        "every socket, which the Pool does not do, to show what that",
        "would be worth. multiprocessing's `apply_async` pipelines too:",
        "its task queue hands a worker its next task before the last",
        "result is collected, so where each wakeup across CPUs costs",
        "~30 µs (the default placement, one worker) it gets ahead of one",
        "call per worker at a time. Cells: calls/s (× floor, in time per",
        "call).")
    for placement in PLACEMENTS:
        found = cells(summary, placement, "throughput")
        if found:
            lines += [f"**{PLACEMENT_TEXT[placement]}**", ""]
            lines += grid(found, "workers", lambda c: (
                f"{num(c.get('calls_per_s'))} ({times(c.get('x_floor'))})"),
                lambda w: f"{w} worker{'s' if w > 1 else ''}")
    return lines


def payload(summary: dict, plots: Dict[str, str]) -> List[str]:
    lines = ["## 3. Payload sweep", ""] + para(
        "One call in flight; a binary argument of the given size is",
        "echoed back as the result. MB/s counts the payload both ways",
        "(2 × size ÷ p50), in 10⁶ bytes per second. Fewer calls are made",
        "at big sizes, so that each cell sends about the same number of",
        "bytes. “msgpack bytes” passes the arguments already encoded and",
        "takes the result undecoded: the Pool's own cost. “Value” adds",
        "the C++ encoding and decoding that a caller of `Invoke` pays.")
    for placement in PLACEMENTS:
        found = cells(summary, placement, "payload")
        if found:
            lines += [f"**{PLACEMENT_TEXT[placement]}**: MB/s "
                      "(× floor in time per call)", ""]
            lines += grid(found, "payload_bytes", lambda c: (
                f"{num(c.get('mb_per_s'))} ({times(c.get('x_floor'))})"),
                size)
            lines += [f"p50 per call, ms ({placement})", ""]
            lines += grid(found, "payload_bytes",
                          lambda c: num((c.get("p50_us") or 0) / 1e3), size)
    if "payload" in plots:
        lines += [f"![{plots['payload'][1]}]({plots['payload'][0]})", ""]
    return lines


def start_row(by: dict, name: str, sizes: List[int]) -> List[str]:
    def get(workers: int, field: str, scale: float = 1) -> str:
        c = by.get((name, workers))
        v = c.get(field) if c else None
        return num(v / scale) if v is not None else "–"

    def ready(workers: int) -> str:
        c = by.get((name, workers))
        if not c:
            return "–"
        return f"{num(c.get('ready_ms'))} ({times(c.get('x_floor'))})"

    big = max(sizes)
    return ([name] + [ready(w) for w in sizes] +
            [get(w, "worker_pss_kb", 1024) for w in sizes if w > 1] +
            [get(big, "worker_uss_kb", 1024), get(big, "host_rss_kb", 1024)])


def startup(summary: dict) -> List[str]:
    found = cells(summary, "default", "startup")
    lines = ["## 4. Start-up and memory", ""] + para(
        "Time from asking for N workers whose module imports numpy until",
        "every one is ready, in ms (× floor); then their memory, from",
        "`/proc/<pid>/smaps_rollup`: PSS and USS (private pages) per",
        "worker, and the RSS of the host process. The floor is N bare",
        "interpreters exec'd at once that import numpy. Default placement",
        "only: starting is CPU-bound import work, which one CPU would",
        "only slow down.") + para(
        "The zygote row forks the N workers from a zygote that has",
        "imported the module already (docs/architecture.md, “Zygote",
        "start”): its own start, paid once per pool, is not counted.") + para(
        "Each multiprocessing start runs in a fresh process. Its fork row",
        "forks a host that had already imported numpy, so that import is",
        "not counted; its forkserver row counts the start of the server,",
        "which imports numpy once before forking the workers.")
    if not found:
        return lines + ["not measured in this run", ""]
    sizes = sorted({c["workers"] for c in found})
    by = {(c["name"], c["workers"]): c for c in found}
    header = (["what"] + [f"ready, {w}" for w in sizes] +
              [f"PSS MB/worker, {w}" for w in sizes if w > 1] +
              [f"USS MB/worker, {max(sizes)}",
               f"host RSS MB, {max(sizes)}"])
    rows = [start_row(by, n, sizes) for n in names(found)]
    return lines + table(header, rows)


# Short names for the columns of the scaling table.
SHORT = {FLOORS["scaling"]: "floor", POOL: "Pool",
         MP_ASYNC: "mp apply_async"}


def scaling_row(by: dict, peers: List[str], workers: int) -> List[str]:
    row = [str(workers)]
    for name in peers:
        c = by.get((name, workers))
        cps = c.get("calls_per_s") if c else None
        row.append(f"{num(1e6 / cps)} ({times(c.get('x_floor'))})"
                   if cps else "–")
    for name in peers:
        c = by.get((name, workers))
        row.append(num(c["total_pss_kb"] / 1024)
                   if c and c.get("total_pss_kb") else "–")
    return row


def scaling(summary: dict, plots: Dict[str, str]) -> List[str]:
    lines = ["## 5. Scaling from 1 to 64 workers", ""] + para(
        "As many calls in flight as workers, 100-byte echo. µs/call is",
        "1 ÷ calls per second (× floor); MB is the host's PSS plus every",
        "worker's PSS. *floor*: raw socketpair echo workers, one call",
        "each at a time; *Pool*: snakepit Pool, msgpack bytes in and",
        "out; *mp apply_async*: multiprocessing.Pool.apply_async. With 2",
        "vCPUs, workers past the second add only switching and memory.")
    for placement in PLACEMENTS:
        found = cells(summary, placement, "scaling")
        if not found:
            continue
        peers = names(found)
        by = {(c["name"], c["workers"]): c for c in found}
        short = [SHORT.get(p, p) for p in peers]
        header = (["workers"] + [f"µs/call, {p}" for p in short] +
                  [f"MB, {p}" for p in short])
        rows = [scaling_row(by, peers, w)
                for w in sorted({c["workers"] for c in found})]
        lines += [f"**{PLACEMENT_TEXT[placement]}**", ""]
        lines += table(header, rows)
    if "scaling" in plots:
        lines += [f"![{plots['scaling'][1]}]({plots['scaling'][0]})", ""]
    return lines


def store_rows(summary: dict) -> List[List[str]]:
    return [[c["name"], num(c.get("p50_us")), num(c.get("p99_us")),
             num(c.get("calls_per_s"))]
            for c in cells(summary, "same", "sessions")
            if not c["name"].startswith("Pool call")]


def session_call_rows(summary: dict, placement: str,
                      overhead: Optional[float]) -> List[List[str]]:
    rows = []
    for c in cells(summary, placement, "sessions"):
        if not c["name"].startswith("Pool call"):
            continue
        ratio = (times(overhead) if c["name"] == SESSION_IN else
                 "1×" if c["name"] == SESSION_NONE else "")
        rows.append([c["name"], num(c.get("p50_us")), num(c.get("p99_us")),
                     num(c.get("calls_per_s")), ratio])
    return rows


def sessions(summary: dict, found_targets: List[dict]) -> List[str]:
    lines = ["## 6. Sessions", ""] + para(
        "The session stores from one thread, each among 1,000 sessions:",
        "`Get` of one session, and `Update` adding one to a msgpack",
        "counter variable (read, decode, encode, compare-and-swap). The",
        "sqlite store uses a fresh file in a temporary folder with its",
        "default sync, FULL (an fsync per commit). Beside them two",
        "baselines: a `std::unordered_map<std::string,",
        "std::string>` lookup among 1,000 entries, and a bare SQLite",
        "INSERT of a 100-byte row, each in its own transaction (sqlite3",
        "C API, WAL, synchronous=FULL, prepared statement). These run",
        "in-process on one thread, so in the same-CPU placement only.")
    rows = store_rows(summary)
    lines += (table(["what", "p50 µs", "p99 µs", "ops/s"], rows) if rows
              else ["not measured in this run", ""])
    lines += para(
        "Then a Pool of one worker (/usr/bin/python3) calling",
        "`bench_session.echo(data, ctx)`, which takes a",
        "`snakepit.Context` and returns its 100-byte argument, without a",
        "session and in a session of a memory store; the pool has the",
        "store as its session backend in both cases. × no session is",
        "the in-session p50 over the no-session p50 of the same round,",
        "then the median. The plain `bench_echo.echo`, without a",
        "Context, is shown beside them.")
    overhead = next((t for t in found_targets
                     if t.get("id") == "session_overhead"), {})
    for placement in PLACEMENTS:
        rows = session_call_rows(summary, placement, overhead.get(placement))
        if rows:
            lines += [f"**{PLACEMENT_TEXT[placement]}**", ""]
            lines += table(["what", "p50 µs", "p99 µs", "calls/s",
                            "× no session (p50)"], rows)
    return lines


def session_scaling_row(by: dict, label: str, sessions: int,
                        with_call: bool) -> List[str]:
    """One count of sessions of one store: its costs, then its memory.
    Bytes per session only past 1 MB of growth: below that, the figure
    is the heap's and the page size's slack, not the sessions'."""
    def get(suffix: str, field: str) -> Optional[float]:
        return by.get((label + suffix, sessions), {}).get(field)

    row = [f"{sessions:,}", num(get(SCALING_GET, "p50_us")),
           num(get(SCALING_GET, "p99_us")),
           num(get(SCALING_UPDATE, "p50_us"))]
    if with_call:
        call = by.get((SCALING_CALL, sessions), {})
        row.append(num(call.get("p50_us")))
    host, grown = get(SCALING_RSS, "host_rss_kb"), get(SCALING_RSS,
                                                       "rss_delta_kb")
    per = get(SCALING_RSS, "bytes_per_session")
    row += [num(host / 1024) if host is not None else "–",
            num(grown / 1024) if grown is not None else "–",
            num(per) if grown is not None and grown >= 1024 else "–"]
    return row


def session_scaling(summary: dict, plots: Dict[str, str]) -> List[str]:
    found = cells(summary, "default", "session_scaling")
    counts = sorted({c["sessions"] for c in found}) or [1, 100_000]
    lines = ["## 7. Scaling with sessions", ""] + para(
        f"Each store grown from {counts[0]:,} to {counts[-1]:,} sessions",
        "in one host process, each session holding three variables (a",
        "32-byte string, 32 bytes of binary and a counter), made as a",
        "caller makes them: `Create`, then one write. At each count:",
        "`Get`, and `Update` adding one to the counter, each call on a",
        "session drawn at random (so that, once the sessions outgrow the",
        "CPU caches, calls pay for the misses); for the memory store, a",
        "call through a Pool of one worker, in one of the sessions, to",
        "`bench_session.get`, which reads a variable with",
        "`ctx.session.get` (one round trip to the host's store); and the",
        "host's RSS (`/proc/<pid>/smaps_rollup`), also as growth over the",
        "same process with the store open (and the pool running) but no",
        "session yet.") + para(
        "The sqlite store runs with synchronous=NORMAL here: an fsync per",
        "commit (section 6) would hide how its own work grows. Its rows",
        "live on disk; the host holds only sqlite's page cache and the",
        "refreshes not yet written. Each store runs in its own process,",
        "once per `bench/run`, in the default placement: one measurement",
        "per cell, not a median of rounds, so noisier than the sections",
        "above. Bytes per session are shown once growth passes 1 MB.")
    if not found:
        return lines + ["not measured in this run", ""]
    by = {(c["name"], c["sessions"]): c for c in found}
    for store, label in SCALING_STORES.items():
        with_call = store == "memory"
        rows = [session_scaling_row(by, label, n, with_call)
                for n in counts if (label + SCALING_RSS, n) in by]
        if not rows:
            continue
        header = (["sessions", "Get p50 µs", "Get p99 µs", "Update p50 µs"]
                  + (["call in a session p50 µs"] if with_call else [])
                  + ["host RSS MB", "RSS growth MB", "bytes/session"])
        lines += [f"**{label}**", ""] + table(header, rows)
    if "sessions" in plots:
        lines += [f"![{plots['sessions'][1]}]({plots['sessions'][0]})", ""]
    return lines


# Targets: each judged on the same-CPU figure, the one that carries over
# to other machines (DESIGN.md D12); the default placement is shown too.

def latency_key(name: str) -> str:
    return results.key_of({"section": "latency", "name": name,
                           "payload_bytes": 100})


def payload_key(name: str, size_bytes: int) -> str:
    return results.key_of({"section": "payload", "name": name,
                           "payload_bytes": size_bytes})


def quotient(rounds: dict, placement: str, top: str, bottom: str,
             field: str) -> Optional[float]:
    """Median over rounds of rows[top][field] / rows[bottom][field]."""
    def one(rows: dict) -> Optional[float]:
        a, b = rows.get(top, {}).get(field), rows.get(bottom, {}).get(field)
        return a / b if a and b else None
    return results.paired(rounds, placement, one)


def verdict(value: Optional[float], goal: float, at_most: bool) -> str:
    if value is None:
        return "not measured"
    if at_most:
        if value <= goal:
            return f"met, {goal / value:.2f}× headroom"
        return (f"missed by {value / goal:.2f}× (p50 must fall "
                f"{1 - goal / value:.0%})")
    if value >= goal:
        return f"met, {value / goal:.2f}× beyond"
    return f"missed, {goal / value:.2f}× short"


def measured(rounds: dict, text: str, top: str, bottom: str, field: str,
             goal: float, at_most: bool, unit: str) -> dict:
    values = {p: quotient(rounds, p, top, bottom, field)
              for p in PLACEMENTS}
    return {"target": text, "goal": goal, "unit": unit,
            "same": values["same"], "default": values["default"],
            "met": (None if values["same"] is None else
                    values["same"] <= goal if at_most else
                    values["same"] >= goal),
            "verdict": verdict(values["same"], goal, at_most)}


def zygote_target(summary: dict) -> dict:
    """An absolute goal, in the default placement (start-up runs only
    there): 50 numpy workers forked by a running zygote, READY within
    100 ms at no more than 3 MB PSS each."""
    key = results.key_of({"section": "startup", "name": ZYGOTE_START,
                          "workers": 50})
    cell = summary.get("default", {}).get(key, {})
    ready, pss = cell.get("ready_ms"), cell.get("worker_pss_kb")
    met = None if ready is None or pss is None else (
        ready <= 100 and pss <= 3 * 1024)
    return {"target": "50 numpy workers ready within 100 ms from a "
            "running zygote, ≤ 3 MB PSS each (default placement)",
            "goal": 100.0, "unit": "ms", "same": None, "default": ready,
            "met": met,
            "verdict": "not measured: this run started no 50 workers "
            "(`--quick` starts 1 and 10)" if met is None else
            f"{num(ready)} ms, {num(pss / 1024)} MB PSS per worker"}


def node_target(rounds: dict, transport: str, suffix: str) -> dict:
    """The node against the bare C++ echo over one transport, with
    whether it beats the Python grpcio server over the same one."""
    node = latency_key(NODE + suffix)
    found = measured(rounds, "node p50 within 1.3× of the bare C++ gRPC "
                     f"echo ({transport})", node,
                     latency_key(GRPC_CPP + suffix), "p50_us", 1.3, True,
                     "× bare echo")
    lower = quotient(rounds, "same", latency_key(GRPC_PY + suffix), node,
                     "p50_us")
    found["vs_python"] = lower
    if lower is not None:
        found["verdict"] += (
            f"; same CPU, {num(lower)}× lower than the Python grpcio "
            "server: beats it" if lower > 1 else
            f"; same CPU, {num(1 / lower)}× higher than the Python grpcio "
            "server: does not beat it")
    return found


def session_key(name: str) -> str:
    return results.key_of({"section": "sessions", "name": name})


def memory_get_target(summary: dict) -> dict:
    """An absolute goal: the memory store's Get p50, median of rounds."""
    key = session_key(MEMORY_GET)
    values = {p: summary.get(p, {}).get(key, {}).get("p50_us")
              for p in PLACEMENTS}
    same = values["same"]
    return {"target": "memory store Get p50 under 1 µs", "goal": 1.0,
            "unit": "µs", "same": same, "default": values["default"],
            "met": None if same is None else same < 1.0,
            "verdict": verdict(same, 1.0, True)}


def session_overhead_target(rounds: dict) -> dict:
    """The same function in a session against without one."""
    found = measured(rounds, "a call in a session adds under 10% to the "
                     "same call without one (p50)", session_key(SESSION_IN),
                     session_key(SESSION_NONE), "p50_us", 1.1, True,
                     "× without")
    same = found["same"]
    if same is not None:
        found["verdict"] = (f"adds {same - 1:.1%}, within the 10% allowed"
                            if same <= 1.1 else
                            f"adds {same - 1:.1%}, over the 10% allowed")
    return {**found, "id": "session_overhead"}


def targets(rounds: dict, summary: dict) -> List[dict]:
    pool, floor = latency_key(POOL), latency_key(FLOORS["latency"])
    big = 64 << 20
    return [
        measured(rounds, "Pool p50 within 1.5× of the raw floor", pool,
                 floor, "p50_us", 1.5, True, "× floor"),
        measured(rounds, "Pool p50 ≥ 3× lower than "
                 "multiprocessing.Pool.apply", latency_key(MP_APPLY), pool,
                 "p50_us", 3, False, "× lower"),
        measured(rounds, "Pool p50 ≥ 10× lower than a Python grpcio "
                 "server", latency_key(GRPC_PY), pool, "p50_us", 10, False,
                 "× lower"),
        measured(rounds, "64 MiB payloads at ≥ half the raw socketpair's "
                 "MB/s", payload_key(POOL, big),
                 payload_key(FLOORS["payload"], big), "mb_per_s", 0.5,
                 False, "of the floor's MB/s"),
        node_target(rounds, "TCP", ""),
        node_target(rounds, "unix socket", UNIX),
        memory_get_target(summary),
        session_overhead_target(rounds),
        zygote_target(summary),
    ]


def with_unit(value: Optional[float], unit: str) -> str:
    if value is None:
        return "–"
    return f"{num(value)}{unit}" if unit.startswith("×") else (
        f"{num(value)} {unit}")


def target_lines(found: List[dict]) -> List[str]:
    rows = []
    for t in found:
        if "today" in t:
            rows.append([t["target"], t["today"], "", t["verdict"]])
            continue
        rows.append([t["target"], f"{with_unit(t['same'], t['unit'])}",
                     f"{with_unit(t['default'], t['unit'])}",
                     ("**yes**, " if t["met"] else "**no**, " if
                      t["met"] is False else "") + t["verdict"]])
    return (["## Targets", ""] + para(
        "The project's own aims for speed and memory, fixed before these",
        "figures were taken and never moved to fit them; a missed one is",
        "reported with how far it is off.",
        "Judged on the same-CPU figure, which carries over to other",
        "machines (see “How to read”); the default placement is shown",
        "beside it. Ratios are taken within each round, then the median.")
        + table(["target", "same CPU", "default", "met"], rows))


def load_note(meta: dict) -> List[str]:
    start, end = (meta.get("load_average") or ["", ""])[:2]
    if not start and not end:
        return []
    return para(
        f"Load average (1, 5, 15 min) at the start: {start or '?'}; at",
        f"the end: {end or '?'}. The benchmarks themselves add to it;",
        "other work sharing the machine adds more and makes the figures",
        "noisier, so compare runs made under similar load.")


def header(meta: dict) -> List[str]:
    return ["# Benchmarks", ""] + para(
        f"Measured {meta['when']} on {meta['machine']}, commit",
        f"`{meta['commit']}`, by `{meta['command']}`: {meta['rounds']}",
        f"round(s) in {meta['seconds']} s. Regenerate with `bench/run`",
        "(under 10 minutes); `bench/run --quick` is a smoke check whose",
        "figures are not meant to be quoted. `bench/compare A.json",
        "B.json` prints the change between two runs; every figure of",
        "every round is kept in the JSON file written beside this one",
        "(`bench/results/` for full runs, `build/bench/quick/` for",
        "`--quick`).") + load_note(meta) + [
        "## How to read", ""] + bullets([
            "**Placement.** *same CPU* pins the benchmark, its workers and "
            "servers to CPU 0 (`taskset -c 0`); *default* leaves "
            "placement to the scheduler. On this VM a wakeup across vCPUs "
            "costs about 30 µs (measured with a C++ echo pinned to one CPU "
            "and then to the other), "
            "more than any framing, so a single-call figure under "
            "*default* depends on where the scheduler happened to put "
            "the two ends. The same-CPU figures are the ones that carry "
            "over to other machines.",
            "**The floor** is a C++ host and a Python process echoing "
            "length-prefixed frames over a socketpair, with no decoding "
            "and no dispatch (`bench/raw_echo.py`): what any C++→Python "
            "call over a socketpair pays at least.",
            "**× floor** is a row's cost (time per call, or time to "
            "start) divided by the floor's, measured in the same round "
            "and placement; the median over rounds. Above 1 is slower.",
            "**Figures** are medians over rounds of each round's p50, p99 "
            "and so on. Each cell stops at its call count or after a few "
            "seconds, whichever comes first; `calls` in the JSON says how "
            "many were timed.",
        ])


PEERS = ["## The peers", ""] + bullets([
    "**snakepit Pool**: `Pool::SubmitRaw(...).GetRaw()` (msgpack bytes) "
    "or `Pool::Invoke` (a `Value`) from C++, calling `bench_echo.echo` "
    "in `bench/bench_echo.py`, which returns its `bytes` argument.",
    "**snakepit CLI one-shot**: `build/snakepit call bench_echo.echo "
    "--module bench/bench_echo.py --python /usr/bin/python3 --json "
    "'{\"data\": {\"$bytes\": ...}}'` as a whole process, spawned and "
    "reaped by `pool_bench`, its output discarded. `python3 -c pass` is "
    "the least that any one-shot Python command costs.",
    "**multiprocessing** (Python 3.11, start method fork unless named): "
    "`Pool(n).apply(echo, (data,))`, `Pool(n).apply_async`, "
    "`ProcessPoolExecutor(1).submit(echo, data).result()`, timed in "
    "Python the way the C++ benchmarks time theirs "
    "(`bench/mp_bench.py`).",
    "**gRPC** (`bench/echo.proto`: `Echo(Blob) returns (Blob)`, one "
    "`bytes` field): a C++ client with the generated sync stub, one "
    "`ClientContext` per call, over TCP on 127.0.0.1 (rows without a "
    "transport) or a unix socket (rows marked so; 100-byte calls only), "
    "message size limits lifted. The **Python grpcio server** (Debian's "
    "grpcio 1.51, sync server, 4 threads) registers the method through "
    "`grpc.method_handlers_generic_handler` without (de)serializers, so "
    "it receives the serialized request as bytes and returns it as the "
    "serialized reply: no protobuf work in Python at all, less than a "
    "Snakepit worker does (it decodes and encodes msgpack), which "
    "favours gRPC. The **bare C++ gRPC echo server** is the generated "
    "sync service copying request to reply: gRPC's own cost, the "
    "baseline for the Snakepit node.",
    "**snakepit node**: `build/snakepitd --module bench/bench_echo.py "
    "--workers 1`, started and stopped (SIGTERM, exit 0 checked) by "
    "`bench/node_bench.cc`, called the same way as the gRPC peers with "
    "the `snakepit.v1.Snakepit/Call` stub: `bench_echo.echo` with the "
    "msgpack map `{\"data\": bin(100)}`, over TCP on 127.0.0.1 and a "
    "unix socket. Unlike the gRPC peers it decodes the arguments, runs "
    "the Python function in a worker process and encodes its result: "
    "the cost a gRPC-to-Python design pays.",
    "**sessions**: `build/bench/session_bench` (`bench/session_bench.cc`) "
    "opens each store with `OpenStore` and calls `Get` and `Update` "
    "directly; its Pool cells call `bench_session.echo` "
    "(`bench/bench_session.py`) with `SubmitRaw(...).GetRaw()`, the "
    "session given in `CallOptions.session`, the pool's backend "
    "`MakePoolBackend` over a memory store. `session_bench scaling` "
    "grows each store through the counts of sessions of section 7.",
])


def markdown(meta: dict, summary: dict, found_targets: List[dict],
             plots: list) -> str:
    by_topic = dict(zip(("scaling", "payload", "sessions"), plots))
    lines = header(meta) + PEERS + target_lines(found_targets)
    lines += latency(summary) + throughput(summary)
    lines += payload(summary, by_topic) + startup(summary)
    lines += scaling(summary, by_topic)
    lines += sessions(summary, found_targets)
    lines += session_scaling(summary, by_topic)
    return "\n".join(lines)
