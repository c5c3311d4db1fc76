"""What a Python user would pick: multiprocessing.Pool.apply and
ProcessPoolExecutor.submit, timed per call like the C++ benchmarks.

Prints one JSON object per measurement.
"""

import concurrent.futures
import json
import multiprocessing
import sys
import time


def echo(data: bytes) -> bytes:
    return data


def summarise(name: str, samples: list) -> dict:
    samples.sort()
    n = len(samples)
    total = sum(samples)
    return {"name": name, "calls": n,
            "p50_us": samples[n // 2] * 1e6,
            "p99_us": samples[min(n - 1, n * 99 // 100)] * 1e6,
            "calls_per_s": n / total}


def timed(fn, calls: int, warmup: int) -> list:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    payload = b"x" * (int(sys.argv[2]) if len(sys.argv) > 2 else 100)
    warmup = max(100, calls // 10)
    with multiprocessing.Pool(1) as pool:
        samples = timed(lambda: pool.apply(echo, (payload,)), calls, warmup)
    print(json.dumps(summarise("multiprocessing.Pool.apply", samples)))
    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        samples = timed(lambda: ex.submit(echo, payload).result(), calls,
                        warmup)
    print(json.dumps(summarise("ProcessPoolExecutor.submit", samples)))


if __name__ == "__main__":
    main()
