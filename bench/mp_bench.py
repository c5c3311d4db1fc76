"""What a Python user would pick instead: multiprocessing.Pool and
concurrent.futures.ProcessPoolExecutor, measured the way pool_bench
measures Snakepit.

    mp_bench.py latency [--calls N] [--limit S] [--payload BYTES]
    mp_bench.py load --section throughput|scaling --workers 1,2,8
                     [--in-flight K] [--memory 1] [--calls N] [--limit S]
    mp_bench.py payload [--sizes B,B,...] [--bytes TOTAL] [--calls N]
    mp_bench.py start [--workers 1,10,50]

Prints one JSON object per measurement, with the fields of
bench/bench_util.h.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import multiprocessing
import multiprocessing.pool
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

APPLY = "multiprocessing.Pool.apply"
APPLY_ASYNC = "multiprocessing.Pool.apply_async"
SUBMIT = "ProcessPoolExecutor.submit"


def echo(data: bytes) -> bytes:
    return data


def summarise(samples: List[float], wall_s: float) -> dict:
    samples.sort()
    n = len(samples)
    return {"calls": n,
            "p50_us": samples[n // 2] * 1e6,
            "p99_us": samples[min(n - 1, n * 99 // 100)] * 1e6,
            "calls_per_s": n / wall_s}


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def repeat(fn: Callable[[], object], calls: int, limit_s: float,
           min_calls: int = 5) -> List[float]:
    """Times up to `calls` calls of `fn`, stopping after `limit_s`."""
    samples = []
    start = time.perf_counter()
    for i in range(calls):
        if i >= min_calls and time.perf_counter() - start > limit_s:
            break
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def measure(fn: Callable[[], object], calls: int, limit_s: float) -> dict:
    repeat(fn, max(2, calls // 10), limit_s / 10, 1)
    samples = repeat(fn, calls, limit_s)
    return summarise(samples, sum(samples))


def latency(args: argparse.Namespace) -> None:
    payload = b"x" * args.payload
    base = {"section": "latency", "payload_bytes": args.payload}
    with multiprocessing.Pool(1) as pool:
        stats = measure(lambda: pool.apply(echo, (payload,)), args.calls,
                        args.limit)
    emit({**base, "name": APPLY, **stats})
    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        stats = measure(lambda: ex.submit(echo, payload).result(),
                        args.calls, args.limit)
    emit({**base, "name": SUBMIT, **stats})


def read_memory(pid: int) -> Dict[str, int]:
    """RSS, PSS and USS of `pid` in kB, from /proc/PID/smaps_rollup."""
    memory = {"rss": 0, "pss": 0, "uss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            lines = f.readlines()[1:]  # the first names the range
    except OSError:
        return memory
    for line in lines:
        key, kb = line.split()[:2]
        if key == "Rss:":
            memory["rss"] = int(kb)
        elif key == "Pss:":
            memory["pss"] = int(kb)
        elif key in ("Private_Clean:", "Private_Dirty:"):
            memory["uss"] += int(kb)
    return memory


def memory_fields(workers: List[int]) -> dict:
    """The fields of MemoryFields in bench_util.h, for this process."""
    host = read_memory(os.getpid())
    each = [read_memory(pid) for pid in workers]
    n = max(1, len(each))
    pss = sum(m["pss"] for m in each)
    return {"host_rss_kb": host["rss"], "host_pss_kb": host["pss"],
            "worker_pss_kb": pss // n,
            "worker_uss_kb": sum(m["uss"] for m in each) // n,
            "worker_rss_kb": sum(m["rss"] for m in each) // n,
            "workers_pss_kb": pss, "total_pss_kb": host["pss"] + pss}


def pool_pids(pool: multiprocessing.pool.Pool) -> List[int]:
    # Pool keeps its processes in _pool: private, but unchanged since
    # Python 2.6, and the only way to name exactly the pool's workers.
    return [p.pid for p in pool._pool]


def drive(pool: multiprocessing.pool.Pool, in_flight: int, calls: int,
          limit_s: float) -> dict:
    """Keeps `in_flight` apply_async calls outstanding, collected in
    submission order, until `calls` or `limit_s` runs out."""
    payload = b"x" * 100
    pending: collections.deque = collections.deque()
    samples = []
    issued = 0
    start = time.perf_counter()
    while issued < min(in_flight, calls):
        pending.append((pool.apply_async(echo, (payload,)),
                        time.perf_counter()))
        issued += 1
    while pending:
        result, t0 = pending.popleft()
        result.get(timeout=60)
        samples.append(time.perf_counter() - t0)
        if issued < calls and time.perf_counter() - start < limit_s:
            pending.append((pool.apply_async(echo, (payload,)),
                            time.perf_counter()))
            issued += 1
    return summarise(samples, time.perf_counter() - start)


def load(args: argparse.Namespace) -> None:
    for workers in args.workers:
        in_flight = args.in_flight or workers
        with multiprocessing.Pool(workers) as pool:
            drive(pool, in_flight, max(in_flight, args.calls // 10),
                  args.limit / 10)
            stats = drive(pool, in_flight, args.calls, args.limit)
            row = {"section": args.section, "name": APPLY_ASYNC,
                   "workers": workers, "in_flight": in_flight,
                   "payload_bytes": 100, **stats}
            if args.memory:
                row.update(memory_fields(pool_pids(pool)))
        emit(row)


def payload(args: argparse.Namespace) -> None:
    with multiprocessing.Pool(1) as pool:
        for size in args.sizes:
            data = b"x" * size
            calls = max(5, min(args.calls, int(args.bytes // size)))
            stats = measure(lambda: pool.apply(echo, (data,)), calls,
                            args.limit)
            emit({"section": "payload", "name": APPLY,
                  "payload_bytes": size, **stats,
                  "mb_per_s": 2 * size / stats["p50_us"]})


START_NAMES = {
    "spawn": "multiprocessing.Pool, spawn (exec), imports numpy",
    "forkserver": "multiprocessing.Pool, forkserver with numpy preloaded",
    "fork": "multiprocessing.Pool, fork of a host that imported numpy",
}


def start_once(method: str, workers: int, ready: Callable) -> dict:
    """Time from creating the pool until every worker has run `ready`,
    whose module imports numpy (already imported when forked from a
    host that has imported it)."""
    ctx = multiprocessing.get_context(method)
    queue = ctx.SimpleQueue()
    t0 = time.perf_counter()
    pool = ctx.Pool(workers, initializer=ready, initargs=(queue,))
    for _ in range(workers):
        queue.get()
    ready_s = time.perf_counter() - t0
    pids = pool_pids(pool)
    row = {"section": "startup", "name": START_NAMES[method],
           "workers": workers, "ready_ms": ready_s * 1e3,
           "workers_found": len(pids), **memory_fields(pids)}
    pool.terminate()
    pool.join()
    return row


def start_one(args: argparse.Namespace) -> None:
    """One start in this fresh process: `--method`, `--workers N`."""
    here = os.path.dirname(os.path.abspath(__file__))
    if args.method == "forkserver":
        # The server imports numpy once, before forking, as a careful
        # user would ask. Python 3.11's forkserver ignores the sys.path
        # it is handed and skips a preload it cannot import without a
        # word; the environment does reach it.
        multiprocessing.set_forkserver_preload(["mp_numpy_init"])
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (here, os.environ.get("PYTHONPATH")) if p)
    # Imports numpy into this host; only a forked child inherits it.
    import mp_numpy_init
    emit(start_once(args.method, args.workers[0], mp_numpy_init.ready))


def start(args: argparse.Namespace) -> None:
    """Each start in a fresh process, so none finds a forkserver or a
    numpy import left by another."""
    for workers in args.workers:
        for method in START_NAMES:
            subprocess.run([sys.executable, os.path.abspath(__file__),
                            "start-one", "--method", method,
                            "--workers", str(workers)],
                           check=True, timeout=300)


def numbers(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("latency", "load", "payload",
                                            "start", "start-one"))
    parser.add_argument("--method", choices=tuple(START_NAMES))
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--limit", type=float, default=5.0)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--section", default="throughput")
    parser.add_argument("--workers", type=numbers, default=[1, 2, 8])
    parser.add_argument("--in-flight", type=int, default=0)
    parser.add_argument("--memory", type=int, default=0)
    parser.add_argument("--sizes", type=numbers,
                        default=[100, 64 << 10, 1 << 20, 16 << 20,
                                 64 << 20])
    parser.add_argument("--bytes", type=float, default=float(1 << 30))
    parser.add_argument("--python", default=sys.executable,
                        help="accepted for symmetry with pool_bench")
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    commands = {"latency": latency, "load": load, "payload": payload,
                "start": start, "start-one": start_one}
    commands[args.command](args)


if __name__ == "__main__":
    main()
