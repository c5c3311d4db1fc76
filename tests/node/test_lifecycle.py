"""Lifecycle faults of snakepitd against real processes: Ctrl-C at a
terminal, workers that ignore SIGTERM, kill -9 of the node, and workers
that crash under load.

Every snakepitd started here carries a marker variable in its
environment, which its workers and their children inherit; a test finds
the processes of its run by that marker (and by the pids its fixtures
report) and never signals anything else. Fixtures:
tests/node/fixtures/lifecycle.py (leaves a trace file per worker event,
starts a `sleep 1000` child in each worker) and ignore_sigterm.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

ROOT = os.environ.get("SNAKEPIT_ROOT",
                      os.path.dirname(os.path.dirname(os.getcwd())))
BUILD = os.environ.get("SNAKEPIT_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "snakepitd")
FIXTURES = os.path.join(ROOT, "tests", "node", "fixtures")
LIFECYCLE = os.path.join(FIXTURES, "lifecycle.py")
IGNORE_SIGTERM = os.path.join(FIXTURES, "ignore_sigterm.py")
START_FAULTS = os.path.join(ROOT, "tests", "pool", "fixtures",
                            "start_faults.py")
PY = "/usr/bin/python3"

# Set on each snakepitd started here, to a value unique to that run.
MARKER = "SNAKEPIT_LIFETEST_RUN"

sys.path.insert(0, os.path.join(ROOT, "examples"))
os.environ.setdefault("SNAKEPIT_PROTO_PY",
                      os.path.join(BUILD, "proto_gen", "python"))
import grpc  # noqa: E402
import python_client  # noqa: E402

pb = python_client.pb


# Processes ------------------------------------------------------------------

def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def carries(pid: int, marker: str) -> bool:
    """True if `pid` is alive and its environment holds our marker.

    Checked before every signal we send, so that a pid reused by an
    unrelated process is never touched.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return f"{MARKER}={marker}".encode() in env and alive(pid)


def marked_processes(marker: str) -> List[int]:
    """Live processes whose environment carries `marker`."""
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and carries(int(name), marker)]


def kill_if_marked(pid: int, marker: str) -> None:
    """SIGKILLs `pid` if it still carries the test's marker."""
    if alive(pid) and carries(pid, marker):
        os.kill(pid, signal.SIGKILL)


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[-1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def wait_until(predicate: Callable[[], bool], timeout: float,
               step: float = 0.02) -> bool:
    """Polls `predicate` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


# One run of snakepitd --------------------------------------------------------

class Run:
    """One snakepitd serving one pool on a Unix socket in a temp folder.

    `terminal=True` starts it as the foreground process of a new
    pseudo-terminal (its own session, the terminal its controlling one),
    as a shell would; the test holds the terminal's master side.
    """

    def __init__(self, module: str, workers: int, *, drain: str = "30s",
                 grace: str = "5s", terminal: bool = False,
                 run_dir: str = "",
                 env: Optional[Dict[str, str]] = None) -> None:
        extra_env = env
        self.dir = tempfile.mkdtemp(prefix="snakepit-life-")
        self.trace = os.path.join(self.dir, "trace")
        os.mkdir(self.trace)
        self.marker = uuid.uuid4().hex
        self.socket = os.path.join(self.dir, "node.sock")
        self.ready_file = os.path.join(self.dir, "ready.json")
        self.grace = parse_seconds(grace)
        self.drain = parse_seconds(drain)
        self.terminal: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.seen: Set[int] = set()  # every pid of the run we learnt of
        self._log = None
        self._transcript = bytearray()
        self._reader: Optional[threading.Thread] = None
        self._channel: Optional[grpc.Channel] = None

        env = dict(os.environ, SNAKEPIT_LIFECYCLE_DIR=self.trace,
                   SNAKEPIT_DRAIN_TIMEOUT=drain,
                   SNAKEPIT_WORKER_GRACE=grace)
        env.update(extra_env or {})
        env[MARKER] = self.marker
        # A registry of runs of this test's own, so that reaping here
        # concerns only the processes the test started.
        env["SNAKEPIT_RUN_DIR"] = run_dir or os.path.join(self.dir, "runs")
        args = [DAEMON, "--listen", f"unix:{self.socket}", "--admin",
                "127.0.0.1:0", "--ready-file", self.ready_file, "--module",
                module, "--python", PY, "--workers", str(workers)]
        try:
            if terminal:
                self._start_on_terminal(args, env)
            else:
                self._start(args, env)
            self._await_ready()
        except BaseException:
            self.end()
            raise

    def _start(self, args: List[str], env: Dict[str, str]) -> None:
        self._log = open(os.path.join(self.dir, "node.log"), "w+")
        self.proc = subprocess.Popen(args + ["--log-format", "json"],
                                     env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def _start_on_terminal(self, args: List[str],
                           env: Dict[str, str]) -> None:
        # setsid(1) makes the process a session leader and, with --ctty,
        # takes stdin (the pty) as its controlling terminal, then execs
        # snakepitd in the same process: the pid stays ours. It does not
        # fork because the child of Popen leads no process group.
        master, slave = os.openpty()
        self.terminal = master
        try:
            self.proc = subprocess.Popen(["setsid", "--ctty"] + args,
                                         env=env, stdin=slave, stdout=slave,
                                         stderr=slave)
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read_terminal,
                                        daemon=True)
        self._reader.start()

    def _read_terminal(self) -> None:
        """Keeps the terminal drained until its last writer is gone."""
        while True:
            try:
                data = os.read(self.terminal, 65536)
            except OSError:  # EIO: no process holds the slave side
                return
            if not data:
                return
            self._transcript += data

    def _await_ready(self) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("node did not start:\n" + self.output())
            time.sleep(0.02)
        with open(self.ready_file) as f:
            ready = json.load(f)
        if ready["pid"] != self.proc.pid:
            raise RuntimeError(f"snakepitd is {ready['pid']}, not the "
                               f"process started ({self.proc.pid})")
        self.admin = ready["admin"]
        self.addr = f"unix:{self.socket}"
        self.client = python_client.Client(self.addr)
        self._channel = grpc.insecure_channel(self.addr)
        self._node_info = self._channel.unary_unary(
            "/snakepit.v1.Snakepit/GetNodeInfo",
            request_serializer=pb.GetNodeInfoRequest.SerializeToString,
            response_deserializer=pb.NodeInfo.FromString)
        self.remember()

    # What the run is made of.

    def traced(self, event: str) -> Dict[int, str]:
        """Pid -> content of the trace files `event-<pid>` so far."""
        out = {}
        for name in os.listdir(self.trace):
            kind, _, pid = name.partition("-")
            if kind == event and pid.isdigit():
                with open(os.path.join(self.trace, name)) as f:
                    out[int(pid)] = f.read()
        return out

    def await_traced(self, event: str, count: int,
                     timeout: float = 10) -> Dict[int, str]:
        wait_until(lambda: len(self.traced(event)) >= count, timeout)
        return self.traced(event)

    def processes(self) -> List[int]:
        """Live processes of this run (the node included)."""
        return marked_processes(self.marker)

    def worker_pids(self) -> List[int]:
        """The node's live children: its workers."""
        return [p for p in self.processes()
                if parent_of(p) == self.proc.pid]

    def remember(self) -> List[int]:
        """Adds the run's current processes and traced pids to `seen`."""
        found = self.processes()
        self.seen.update(found)
        self.seen.update(self.traced("started"))
        self.seen.update(int(c) for c in self.traced("child").values() if c)
        return found

    # Talking to it.

    def node_info(self) -> Any:
        return self._node_info(pb.GetNodeInfoRequest(), timeout=5)

    def pool(self) -> Any:
        return self.node_info().pools[0]

    def submit(self, function: str, args: Any,
               timeout: float = 60) -> grpc.Future:
        return self.client._call.future(
            self.client._request(function, args), timeout=timeout)

    def metrics(self) -> str:
        return self.admin_get("/metrics")

    def admin_get(self, path: str) -> str:
        """The body of GET `path` on the admin server, whatever the status."""
        url = f"http://{self.admin}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            return e.read().decode()

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
            with open(self._log.name) as f:
                return f.read()
        return self._transcript.decode(errors="replace")

    # The end.

    def hang_up(self) -> None:
        """Closes the test's connections to the node. Idempotent."""
        if self._channel is not None:
            self._channel.close()
            self.client.close()
            self._channel = None

    def end(self) -> None:
        """Kills whatever of the run is left, by pid, and frees the rest.

        Only processes that still carry the run's marker are signalled.
        """
        self.hang_up()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        for pid in self.seen | set(self.processes()):
            if carries(pid, self.marker):
                os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.terminal is not None:
            os.close(self.terminal)
            self.terminal = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dir, ignore_errors=True)


def parse_seconds(text: str) -> float:
    """'5s', '250ms' -> seconds (the forms used here)."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.rstrip("s"))


def outcome(future: grpc.Future) -> Tuple[str, Any]:
    """('ok', result) or ('error', reason) of a finished call."""
    try:
        return "ok", json.loads(future.result().result.data)
    except grpc.RpcError as exc:
        return "error", python_client._error(exc).reason


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


class LifecycleTest(unittest.TestCase):
    """Starts runs that tearDown ends, whatever happened."""

    def start(self, *args: Any, **kwargs: Any) -> Run:
        run = Run(*args, **kwargs)
        self.addCleanup(run.end)
        return run

    def await_busy(self, run: Run, busy: int) -> None:
        self.assertTrue(wait_until(lambda: run.pool().busy == busy, 10),
                        f"never {busy} busy workers: {run.pool()}")

    def assert_nothing_left(self, run: Run, deadline: float) -> None:
        """Every process of the run is gone by `deadline` (monotonic)."""
        def gone() -> bool:
            return (not [p for p in run.seen if alive(p)]
                    and not run.processes())
        wait_until(gone, max(0.0, deadline - time.monotonic()))
        left = {p: parent_of(p) for p in run.seen | set(run.processes())
                if alive(p)}
        self.assertFalse(left, f"left over (pid: parent): {left}\n"
                               + run.output()[-4000:])


# 1. Ctrl-C -------------------------------------------------------------------

class CtrlCTest(LifecycleTest):
    def press_ctrl_c(self) -> Tuple[Run, Set[int]]:
        """A node of 3 workers on a terminal, one long call running, and
        Ctrl-C typed there; returns once the node has exited 0 and every
        process of the run is gone within the grace + 1 s after the drain.
        Also returns the worker pids.
        """
        run = self.start(LIFECYCLE, 3, drain="10s", grace="2s",
                         terminal=True)
        workers = set(run.await_traced("started", 3))
        self.assertEqual(len(run.await_traced("child", 3)), 3)
        run.remember()
        call = run.submit("lifecycle.sleep", {"seconds": 1.5})
        self.await_busy(run, 1)

        os.write(run.terminal, b"\x03")
        # The drain rule: the call in flight may finish (drain 10 s).
        self.assertEqual(outcome(call), ("ok", 1.5), run.output())
        drained = time.monotonic()
        self.assertEqual(run.proc.wait(timeout=run.grace + 10), 0,
                         run.output())
        self.assert_nothing_left(run, drained + run.grace + 1)
        self.assertIn("got signal 2 (INT)", run.output())
        return run, workers

    def test_ctrl_c_at_a_terminal_drains_and_leaves_nothing(self):
        run, _ = self.press_ctrl_c()
        # SIGINT went to the terminal's foreground group, the node's
        # alone; each worker leads its own group.
        self.assertEqual(run.traced("sigint"), {})

    def test_the_fixture_records_the_signals_it_gets(self):
        # The control for the two tests around it: a worker signalled
        # directly leaves its trace.
        run = self.start(LIFECYCLE, 2, terminal=True)
        first, second = sorted(run.await_traced("started", 2))
        run.remember()
        for pid, signum in ((first, signal.SIGINT),
                            (second, signal.SIGTERM)):
            if carries(pid, run.marker):
                os.kill(pid, signum)
        self.assertEqual(set(run.await_traced("sigint", 1)), {first})
        self.assertEqual(set(run.await_traced("sigterm", 1)), {second})
        self.assertTrue(wait_until(lambda: not alive(second), 5))
        self.assertTrue(alive(first))

    # Workers get SIGTERM while the pool's I/O thread (their parent-death
    # signal's anchor) still runs and their sockets are open, so their
    # own handlers run within node.worker_grace.
    def test_ctrl_c_at_a_terminal_gives_each_worker_sigterm_first(self):
        run, workers = self.press_ctrl_c()
        self.assertEqual(set(run.traced("sigterm")), workers,
                         "workers that did not see SIGTERM before dying")


# 2. Workers that ignore SIGTERM ---------------------------------------------

class IgnoredSigtermTest(LifecycleTest):
    def test_idle_workers_that_ignore_sigterm_end_within_the_grace(self):
        run = self.start(IGNORE_SIGTERM, 2, grace="2s")
        workers = run.worker_pids()
        self.assertEqual(len(workers), 2)

        run.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        self.assertEqual(run.proc.wait(timeout=run.grace + 10), 0,
                         run.output())
        self.assertLessEqual(time.monotonic() - sent, run.grace + 1,
                             run.output())
        self.assert_nothing_left(run, sent + run.grace + 1)

    def test_busy_worker_that_ignores_sigterm_is_killed_after_grace(self):
        # One worker sleeps with the GIL free (its runtime sees the
        # host's end); the other is wedged in C (see
        # ignore_sigterm.wedge), so only the host's SIGKILL after the
        # grace can end it.
        run = self.start(IGNORE_SIGTERM, 2, drain="1s", grace="2s")
        workers = run.worker_pids()
        self.assertEqual(len(workers), 2)
        calls = [run.submit("ignore_sigterm.sleep", {"seconds": 60}),
                 run.submit("ignore_sigterm.wedge", {"seconds": 60})]
        self.await_busy(run, 2)

        run.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        for call in calls:
            self.assertEqual(outcome(call), ("error", "pool_closed"))
        # A client still connected holds the node's gRPC server stop for
        # its whole deadline (1 s, in Node::Drain) after the workers are
        # gone; this one has its answers, so it hangs up.
        run.hang_up()
        self.assertEqual(run.proc.wait(timeout=run.drain + run.grace + 10),
                         0, run.output())
        took = time.monotonic() - sent
        self.assertLessEqual(took, run.drain + run.grace + 1, run.output())
        self.assert_nothing_left(run, sent + run.drain + run.grace + 1)
        self.assertIn("did not exit within 2s; killing it", run.output())


# 3. kill -9 of the node -----------------------------------------------------

class HostKilledTest(LifecycleTest):
    def test_sigkill_of_the_node_leaves_no_worker_and_no_child(self):
        run = self.start(LIFECYCLE, 8)
        workers = run.await_traced("started", 8)
        children = run.await_traced("child", 8)
        self.assertEqual((len(workers), len(children)), (8, 8))
        calls = [run.submit("lifecycle.sleep", {"seconds": 60})
                 for _ in range(4)]
        self.await_busy(run, 4)
        self.assertEqual(len(run.remember()), 1 + 8 + 8)

        run.proc.kill()
        killed = time.monotonic()
        run.proc.wait(timeout=10)
        self.assert_nothing_left(run, killed + 2)
        for call in calls:
            self.assertEqual(outcome(call)[0], "error")


    def test_next_node_reaps_what_escaped_a_killed_one(self):
        runs = tempfile.mkdtemp(prefix="snakepit-runs-")
        self.addCleanup(shutil.rmtree, runs, True)
        first = self.start(LIFECYCLE, 2, run_dir=runs)
        workers = first.await_traced("started", 2)
        escaped = outcome(first.submit("lifecycle.escape", {}))[1]
        self.assertTrue(alive(escaped))
        first.seen.add(escaped)
        self.addCleanup(kill_if_marked, escaped, first.marker)

        first.proc.kill()
        first.proc.wait(timeout=10)
        # The workers and their groups go; the escaped process does not.
        self.assertTrue(wait_until(
            lambda: not [p for p in workers if alive(p)], 5))
        time.sleep(0.5)
        self.assertTrue(alive(escaped), "nothing should have ended it yet")

        # A new node on the same registry reaps the crashed run's leftover.
        second = self.start(LIFECYCLE, 1, run_dir=runs)
        self.assertTrue(wait_until(lambda: not alive(escaped), 2),
                        second.output()[-4000:])
        self.assertIn("is stale: killed 1 process", second.output())


# 4. A pool whose workers stop being able to start -------------------------

class DegradedTest(LifecycleTest):
    def test_a_pool_that_cannot_restart_workers_says_so_and_fails_fast(self):
        flag = tempfile.mktemp(prefix="snakepit-broken-")
        self.addCleanup(lambda: os.path.exists(flag) and os.remove(flag))
        run = self.start(START_FAULTS, 1, env={"SP_FAIL_WHILE": flag})
        self.assertEqual(outcome(run.submit("start_faults.echo",
                                            {"value": 1}))[1], 1)

        # The module breaks on disk (say, a bad deploy); the worker dies.
        open(flag, "w").close()
        kind, _ = outcome(run.submit("start_faults.crash", {}))
        self.assertEqual(kind, "error")
        self.assertTrue(wait_until(lambda: run.pool().state == "degraded",
                                   10), str(run.pool()))
        started = time.monotonic()
        with self.assertRaises(grpc.RpcError) as caught:
            run.submit("start_faults.echo", {"value": 2}, timeout=30).result()
        self.assertLess(time.monotonic() - started, 1.0)
        error = python_client._error(caught.exception)
        self.assertEqual(error.reason, "import_error")
        self.assertIn(f"{flag} exists", str(error))
        self.assertIn("degraded", str(error))
        self.assertIn(f"{flag} exists", run.pool().start_failure)
        self.assertIn("degraded", run.admin_get("/readyz?verbose"))
        self.assertEqual(metric(run.metrics(), "snakepit_pool_state",
                                pool="default", state="degraded"), 1)

        # Fixed: the retries (with backoff) bring the pool back.
        os.remove(flag)
        self.assertTrue(wait_until(lambda: run.pool().state == "ready",
                                   40), str(run.pool()))
        self.assertEqual(outcome(run.submit("start_faults.echo",
                                            {"value": 3}))[1], 3)


# 5. Crashes under load ------------------------------------------------------

class CrashLoadTest(LifecycleTest):
    CALLS = 200
    IN_FLIGHT = 16

    def test_half_of_200_calls_crash_their_worker(self):
        run = self.start(LIFECYCLE, 4)

        def one(n: int) -> Tuple[int, str, Any, float]:
            future = run.submit("lifecycle.exit_if_odd", {"n": n})
            kind, value = outcome(future)
            return n, kind, value, time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(self.IN_FLIGHT) as pool:
            answers = list(pool.map(one, range(self.CALLS), timeout=120))

        # One answer per call: its result, or worker_crashed.
        self.assertEqual([a[0] for a in answers], list(range(self.CALLS)))
        for n, kind, value, _ in answers:
            expected = ("error", "worker_crashed") if n % 2 else ("ok", n)
            self.assertEqual((kind, value), expected, f"call {n}")
        last_crash = max(t for n, _, _, t in answers if n % 2)

        def full() -> bool:
            pool = run.pool()
            return pool.ready == 4 and pool.starting == 0
        self.assertTrue(wait_until(full, 10), str(run.pool()))
        self.assertLessEqual(time.monotonic() - last_crash, 2,
                             str(run.pool()))

        # The node counted each call once, and each crash once.
        text = run.metrics()
        fn = "lifecycle.exit_if_odd"
        self.assertEqual(metric(text, "snakepit_calls_total", function=fn),
                         self.CALLS)
        self.assertEqual(metric(text, "snakepit_calls_total", function=fn,
                                code="OK"), self.CALLS // 2)
        self.assertEqual(metric(text, "snakepit_worker_restarts_total",
                                reason="crash"), self.CALLS // 2)
        self.assertEqual(run.pool().restarts, self.CALLS // 2)


if __name__ == "__main__":
    unittest.main()
