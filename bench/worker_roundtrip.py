"""Small-call round trip to one Python worker, driven from Python.

    worker_roundtrip.py [--calls N] [--rounds R] [--payload BYTES]
                        [--python PATH] [--max-concurrency N]

Starts `python -m snakepit._worker --module bench_echo` the way the host
does (channel on fd 3, control on fd 4), sends `bench_echo.echo` calls one
at a time and prints the median round trip of each round. It then does
the same against bench/raw_echo.py, the floor (a bare recv/send loop), so
the difference is what the worker's Python adds per call. The driver is
Python too, so both figures include its cost; only the difference means
much.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import struct
import sys
import time
from typing import List

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.join(os.path.dirname(BENCH_DIR), "python")
PREFIX = struct.Struct("<BBHIIQ")
LEN = struct.Struct("<I")
HELLO, READY, CALL, RESULT = 1, 2, 10, 11

sys.path.insert(0, PYTHON_DIR)
from snakepit._codec import new_codec  # noqa: E402

CODEC = new_codec()


def spawn(python: str, argv: List[str]) -> tuple:
    """Starts `argv` with a socketpair on fds 3 and 4; returns
    (pid, channel, control)."""
    chan, child_chan = socket.socketpair()
    ctl, child_ctl = socket.socketpair()
    sources = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
               for s in (child_chan, child_ctl)]
    actions = [(os.POSIX_SPAWN_DUP2, fd, target)
               for fd, target in zip(sources, (3, 4))]
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    pid = os.posix_spawn(python, [python] + argv, env,
                         file_actions=actions, setpgroup=0)
    for fd in sources:
        os.close(fd)
    child_chan.close()
    child_ctl.close()
    return pid, chan, ctl


def recv_exact(sock: socket.socket, view: memoryview, size: int) -> None:
    got = 0
    while got < size:
        n = sock.recv_into(view[got:size])
        if n == 0:
            raise EOFError("the worker closed the channel")
        got += n


def read_frame(sock: socket.socket, view: memoryview) -> tuple:
    recv_exact(sock, view, PREFIX.size)
    ftype, _, _, hlen, blen, fid = PREFIX.unpack_from(view)
    recv_exact(sock, view[PREFIX.size:], hlen + blen)
    return ftype, fid


def median(samples: List[float]) -> float:
    samples.sort()
    return samples[len(samples) // 2]


def time_worker(args: argparse.Namespace) -> List[float]:
    argv = ["-m", "snakepit._worker", "--module", "bench_echo",
            "--path", BENCH_DIR, "--pool", "bench",
            "--max-concurrency", str(args.max_concurrency)]
    if args.max_concurrency == 0:
        argv = argv[:-2]  # A worker from before the option.
    pid, chan, ctl = spawn(args.python, argv)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        assert read_frame(chan, view)[0] == HELLO
        assert read_frame(chan, view)[0] == READY
        head = CODEC.encode({"fn": "bench_echo.echo"})
        body = CODEC.encode([b"x" * args.payload])
        medians = []
        for _ in range(args.rounds):
            samples = []
            for i in range(args.calls):
                frame = PREFIX.pack(CALL, 0, 0, len(head), len(body),
                                    i + 1) + head + body
                t0 = time.perf_counter()
                chan.sendall(frame)
                ftype, fid = read_frame(chan, view)
                samples.append(time.perf_counter() - t0)
                assert (ftype, fid) == (RESULT, i + 1), (ftype, fid)
            medians.append(median(samples))
        return medians
    finally:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def time_floor(args: argparse.Namespace) -> List[float]:
    pid, chan, ctl = spawn(args.python,
                           [os.path.join(BENCH_DIR, "raw_echo.py")])
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    payload = LEN.pack(args.payload) + b"x" * args.payload
    try:
        medians = []
        for _ in range(args.rounds):
            samples = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                chan.sendall(payload)
                recv_exact(chan, view, len(payload))
                samples.append(time.perf_counter() - t0)
            medians.append(median(samples))
        return medians
    finally:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--payload", type=int, default=16,
                        help="bytes echoed")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--max-concurrency", type=int, default=1,
                        help="0: do not pass the option (older workers)")
    args = parser.parse_args()
    worker = time_worker(args)
    floor = time_floor(args)
    best_worker, best_floor = min(worker), min(floor)
    print(f"worker round trip, median per round (us): "
          f"{' '.join(f'{m * 1e6:.2f}' for m in worker)}")
    print(f"floor round trip, median per round (us):  "
          f"{' '.join(f'{m * 1e6:.2f}' for m in floor)}")
    print(f"best: worker {best_worker * 1e6:.2f} us, floor "
          f"{best_floor * 1e6:.2f} us, worker's own Python "
          f"{(best_worker - best_floor) * 1e6:.2f} us")


if __name__ == "__main__":
    main()
