"""snakepitd as a real process, called from the CLI, the C++ client and
the Python client (examples/python_client.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from typing import List, Optional

ROOT = os.environ.get("SNAKEPIT_ROOT", os.getcwd())
BUILD = os.environ.get("SNAKEPIT_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "snakepitd")
CLI = os.path.join(BUILD, "snakepit")
CPP_CLIENT = os.path.join(BUILD, "client_example")
FAULTS = os.path.join(ROOT, "tests", "pool", "fixtures", "faults.py")
SESSIONS = os.path.join(ROOT, "tests", "pool", "fixtures", "sessions.py")
LAB = os.path.join(ROOT, "examples", "lab.py")
PY = "/usr/bin/python3"

sys.path.insert(0, os.path.join(ROOT, "examples"))
os.environ.setdefault("SNAKEPIT_PROTO_PY",
                      os.path.join(BUILD, "proto_gen", "python"))
import grpc  # noqa: E402
import python_client  # noqa: E402


class Node:
    """One snakepitd process, on port 0 and a Unix socket."""

    def __init__(self, *extra: str, config: Optional[str] = None,
                 workers: int = 2) -> None:
        self.dir = tempfile.mkdtemp(prefix="snakepit-node-")
        self.ready_file = os.path.join(self.dir, "ready.json")
        self.socket = os.path.join(self.dir, "node.sock")
        args = [DAEMON, "--listen", "127.0.0.1:0", "--listen",
                f"unix:{self.socket}", "--admin", "127.0.0.1:0",
                "--ready-file", self.ready_file, "--log-format", "json"]
        if config is None:
            args += ["--module", FAULTS, "--module", LAB, "--python", PY,
                     "--workers", str(workers)]
        else:
            args += ["--config", config]
        self.log = open(os.path.join(self.dir, "node.log"), "w+")
        self.proc = subprocess.Popen(args + list(extra), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("node did not start:\n" + self.logs())
            time.sleep(0.02)
        with open(self.ready_file) as f:
            ready = json.load(f)
        self.addr = ready["grpc"][0]
        self.unix_addr = f"unix:{self.socket}"
        self.admin = ready["admin"]

    def logs(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def http(self, path: str) -> tuple:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}",
                                        timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def worker_pids(self) -> List[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True,
                          timeout=timeout)


class ServingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.node = Node()
        cls.client = python_client.Client(cls.node.addr)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.assertEqual = unittest.TestCase.assertEqual
        code = cls.node.stop()
        if code != 0:
            raise AssertionError(f"node exited {code}:\n{cls.node.logs()}")

    def test_three_clients_get_identical_results(self) -> None:
        args = json.dumps({"values": [3.5, 1.25, 9, 4, 7.75]})
        from_cli = cli("call", "lab.stats", "--addr", self.node.addr,
                       "--json", args)
        self.assertEqual(from_cli.returncode, 0, from_cli.stderr)
        from_unix = cli("call", "lab.stats", "--addr", self.node.unix_addr,
                        "--json", args)
        from_cpp = subprocess.run([CPP_CLIENT, self.node.addr, "lab.stats",
                                   args], capture_output=True, text=True,
                                  timeout=60)
        self.assertEqual(from_cpp.returncode, 0, from_cpp.stderr)
        from_python = self.client.call("lab.stats", json.loads(args))
        self.assertEqual(json.loads(from_cli.stdout), from_python)
        self.assertEqual(json.loads(from_unix.stdout), from_python)
        self.assertEqual(json.loads(from_cpp.stdout), from_python)

    def test_fn_list_health_and_node_info(self) -> None:
        r = cli("fn", "list", "--addr", self.node.addr, "-o", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        names = {f["name"] for f in json.loads(r.stdout)}
        self.assertTrue({"faults.add", "lab.train_digits"} <= names)
        self.assertEqual(cli("health", "--addr", self.node.addr,
                             "--ready").returncode, 0)
        r = cli("node", "info", "--addr", self.node.addr, "-o", "json")
        info = json.loads(r.stdout)
        self.assertEqual(info["pools"][0]["size"], 2)
        self.assertFalse(info["draining"])

    def test_python_exception_details_reach_every_client(self) -> None:
        with self.assertRaises(python_client.SnakepitError) as caught:
            self.client.call("faults.raise_two_arg")
        self.assertEqual(caught.exception.reason, "python_exception")
        self.assertEqual(caught.exception.python_type, "faults.TwoArgError")
        self.assertIn("raise TwoArgError", caught.exception.traceback)
        r = cli("call", "faults.raise_two_arg", "--addr", self.node.addr)
        self.assertEqual(r.returncode, 3)
        self.assertIn("error: python_exception: faults.TwoArgError",
                      r.stderr)
        self.assertIn("Traceback", r.stderr)

    def test_deadline_of_one_second_on_a_ten_second_call(self) -> None:
        start = time.monotonic()
        with self.assertRaises(python_client.SnakepitError) as caught:
            self.client.call("faults.sleep", {"seconds": 10}, timeout=1)
        took = time.monotonic() - start
        self.assertEqual(caught.exception.code,
                         grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(took, 1.5)
        # Both workers take calls again soon after (the sleeping one is
        # replaced after the cancel grace): two calls at once run on two
        # workers.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            r = cli("node", "info", "--addr", self.node.addr, "-o", "json")
            pool = json.loads(r.stdout)["pools"][0]
            if pool["ready"] == 2 and pool["busy"] == 0:
                break
            time.sleep(0.05)
        pair = [self.client._call.future(self.client._request(
            "faults.pid_after", {"seconds": 0.5}), timeout=10)
            for _ in range(2)]
        pids = {json.loads(f.result().result.data) for f in pair}
        self.assertEqual(len(pids), 2)

    def test_cancelling_a_stream_stops_the_generator(self) -> None:
        marker = os.path.join(self.node.dir, "stream-closed")
        chunks = self.client.stream("faults.guarded_ticker",
                                    {"marker": marker, "interval": 0.05})
        got = [next(chunks) for _ in range(3)]
        self.assertEqual(got, [0, 1, 2])
        chunks.close()  # cancels the RPC
        deadline = time.monotonic() + 1
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(os.path.exists(marker), "finally did not run")
        self.assertEqual(self.client.call("faults.add", {"a": 1}), 1)

    def test_long_errors_keep_their_reason(self) -> None:
        with self.assertRaises(python_client.SnakepitError) as caught:
            self.client.call("faults.raise_long", {"n": 50000})
        self.assertEqual(caught.exception.reason, "python_exception")
        self.assertEqual(caught.exception.python_type, "ValueError")

    def test_cli_stream(self) -> None:
        r = cli("call", "faults.ticker", "--addr", self.node.addr, "-a",
                "n=3", "-a", "interval=0", "--stream")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([json.loads(x) for x in r.stdout.splitlines()],
                         [0, 1, 2])

    def test_malformed_input_on_every_edge(self) -> None:
        r = cli("call", "faults.add", "--addr", self.node.addr, "--json",
                "{bad")
        self.assertEqual(r.returncode, 1)
        self.assertIn("invalid JSON", r.stderr)

        stub = self.client._call
        bad_type = python_client.pb.CallRequest(
            function="faults.add",
            args=python_client.pb.Payload(content_type="text/yaml",
                                          data=b"a: 1"))
        with self.assertRaises(grpc.RpcError) as caught:
            stub(bad_type, timeout=10)
        self.assertEqual(caught.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("unsupported content type", caught.exception.details())

        with self.assertRaises(python_client.SnakepitError) as unknown:
            self.client.call("faults.nope")
        self.assertEqual(unknown.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(unknown.exception.reason, "unknown_function")

        empty = python_client.pb.CallRequest(
            function="faults.add",
            args=python_client.pb.Payload(content_type="application/msgpack",
                                          data=b""))
        with self.assertRaises(grpc.RpcError) as caught:
            stub(empty, timeout=10)
        self.assertEqual(caught.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT)

        garbage = python_client.pb.CallRequest(
            function="faults.add",
            args=python_client.pb.Payload(content_type="application/msgpack",
                                          data=b"\xc1\xc1"))
        with self.assertRaises(grpc.RpcError) as caught:
            stub(garbage, timeout=10)
        self.assertEqual(caught.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT)

        big = python_client.pb.CallRequest(
            function="faults.byte_len",
            args=python_client.pb.Payload(
                content_type="application/msgpack",
                data=b"\x81\xa4data\xc6"
                + ((128 << 20) + 16).to_bytes(4, "big")
                + bytes((128 << 20) + 16)))
        with self.assertRaises(grpc.RpcError) as caught:
            stub(big, timeout=30)
        self.assertEqual(caught.exception.code(),
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn(str(128 << 20), caught.exception.details())

        self.assertEqual(self.client.call("faults.add", {"a": 2, "b": 3}), 5)

    def test_cpp_client_shows_the_python_traceback(self) -> None:
        r = subprocess.run([CPP_CLIENT, self.node.addr,
                            "faults.raise_two_arg"], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("Traceback (most recent call last)", r.stderr)
        self.assertIn("raise_two_arg", r.stderr)

    def test_metrics_parse_and_count_calls(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        def calls_ok() -> float:
            status, text = self.node.http("/metrics")
            self.assertEqual(status, 200)
            total = 0.0
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if (sample.name == "snakepit_calls_total"
                            and sample.labels.get("function") == "faults.add"
                            and sample.labels.get("code") == "OK"):
                        total += sample.value
            return total

        before = calls_ok()
        for i in range(7):
            self.client.call("faults.add", {"a": i})
        self.assertEqual(calls_ok() - before, 7)

    def test_livez_and_readyz(self) -> None:
        self.assertEqual(self.node.http("/livez")[0], 200)
        status, text = self.node.http("/readyz?verbose")
        self.assertEqual(status, 200, text)
        self.assertIn("not draining", text)


class SessionTest(unittest.TestCase):
    def test_session_flow_and_moving_sessions_between_stores(self) -> None:
        node = Node("--module", SESSIONS, workers=2)
        try:
            r = cli("session", "create", "--id", "s-1", "--addr", node.addr,
                    "-o", "json")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["id"], "s-1")
            r = cli("call", "sessions.remember", "--addr", node.addr,
                    "--session", "s-1", "-a", "key=colour", "-a",
                    "value=teal")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = cli("call", "sessions.recall", "--addr", node.addr,
                    "--session", "s-1", "-a", "key=colour",
                    "--affinity", "strict-queue")
            self.assertEqual(json.loads(r.stdout)["var"], "teal")
            self.assertEqual(json.loads(r.stdout)["local"], "teal")

            r = cli("call", "sessions.recall", "--addr", node.addr,
                    "--session", "missing", "-a", "key=colour")
            self.assertEqual(r.returncode, 3)
            self.assertIn("error: session_not_found", r.stderr)

            for i in range(5):
                cli("session", "create", "--id", f"bulk-{i}", "--addr",
                    node.addr)
            r = cli("session", "list", "--addr", node.addr, "-o", "json")
            self.assertEqual(len(json.loads(r.stdout)), 6)
            r = cli("session", "show", "s-1", "--addr", node.addr, "-o",
                    "json")
            self.assertEqual(json.loads(r.stdout)["variables"],
                             {"colour": "teal"})
            export = os.path.join(node.dir, "sessions.jsonl")
            with open(export, "w") as f:
                r = subprocess.run([CLI, "session", "export", "--addr",
                                    node.addr], stdout=f,
                                   stderr=subprocess.PIPE, text=True,
                                   timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = cli("session", "drop", "bulk-0", "--addr", node.addr)
            self.assertIn("deleted", r.stdout)
            r = cli("session", "drop", "bulk-0", "--addr", node.addr)
            self.assertIn("no such session", r.stdout)
        finally:
            self.assertEqual(node.stop(), 0)

        # Into a node with a durable store.
        config = os.path.join(node.dir, "durable.toml")
        db = os.path.join(node.dir, "sessions.db")
        with open(config, "w") as f:
            f.write(f'[sessions]\nstore = "sqlite"\npath = "{db}"\n'
                    f'[[pool]]\nname = "s"\nmodules = ["{SESSIONS}"]\n'
                    f'python = "{PY}"\nsize = 1\n')
        durable = Node(config=config)
        try:
            with open(export) as f:
                r = subprocess.run([CLI, "session", "import", "--addr",
                                    durable.addr], stdin=f,
                                   capture_output=True, text=True,
                                   timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stderr)["imported"], 6)
            r = cli("call", "sessions.recall", "--addr", durable.addr,
                    "--session", "s-1", "-a", "key=colour")
            self.assertEqual(json.loads(r.stdout)["var"], "teal")
            self.assertIsNone(json.loads(r.stdout)["local"])
        finally:
            self.assertEqual(durable.stop(), 0)

        # The sqlite store kept them across the restart.
        durable = Node(config=config)
        try:
            r = cli("session", "list", "--addr", durable.addr, "-o", "json")
            self.assertEqual(len(json.loads(r.stdout)), 6)
        finally:
            self.assertEqual(durable.stop(), 0)


class MetricsTest(unittest.TestCase):
    """What snakepit_calls_total and its companions count, call by call."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.node = Node(workers=2)
        cls.client = python_client.Client(cls.node.addr)
        cls.channel = grpc.insecure_channel(cls.node.addr)
        service = "/snakepit.v1.Snakepit/"
        cls.call = cls.channel.unary_unary(
            service + "Call",
            request_serializer=python_client.pb.CallRequest.SerializeToString,
            response_deserializer=python_client.pb.CallResponse.FromString)
        cls.stream = cls.channel.unary_stream(
            service + "CallStream",
            request_serializer=python_client.pb.CallRequest.SerializeToString,
            response_deserializer=python_client.pb.CallChunk.FromString)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.channel.close()
        code = cls.node.stop()
        if code != 0:
            raise AssertionError(f"node exited {code}:\n{cls.node.logs()}")

    def scrape(self) -> str:
        status, text = self.node.http("/metrics")
        self.assertEqual(status, 200)
        return text

    def samples(self, name: str, **labels: str) -> list:
        """The scraped samples of `name` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families
        return [sample
                for family in text_string_to_metric_families(self.scrape())
                for sample in family.samples
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items())]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(sample.value for sample in self.samples(name, **labels))

    def await_metric(self, want: float, name: str, **labels: str) -> None:
        """Waits up to 10 s for the metric to reach `want`: a call is
        counted when the node has finished it, which may be just after
        its client gave up."""
        deadline = time.monotonic() + 10
        while self.metric(name, **labels) < want:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(self.metric(name, **labels), want, labels)

    def request(self, function: str, args: object = None,
                pool: str = "") -> object:
        data = b"" if args is None else json.dumps(args).encode()
        return python_client.pb.CallRequest(
            function=function, pool=pool,
            args=python_client.pb.Payload(content_type="application/json",
                                          data=data))

    def test_names_the_pool_lacks_count_under_one_label(self) -> None:
        calls = "snakepit_calls_total"
        unknown = self.metric(calls, function="_unknown", code="NOT_FOUND")
        ok = self.metric(calls, function="faults.add", code="OK")
        size = len(self.scrape())
        names = [f"typo{i}" for i in range(300)] + ["", "x" * 100_000]
        for name in names:
            with self.assertRaises(grpc.RpcError) as caught:
                self.call(self.request(name, pool="default"), timeout=30)
            self.assertEqual(caught.exception.code(),
                             grpc.StatusCode.NOT_FOUND)
        for i in range(3):
            self.client.call("faults.add", {"a": i})

        self.await_metric(unknown + len(names), calls, function="_unknown",
                          code="NOT_FOUND")
        self.assertEqual(self.metric(calls, function="faults.add",
                                     code="OK"), ok + 3)
        text = self.scrape()
        self.assertNotIn("typo", text)
        self.assertLess(len(text), size + 4096)

    def test_calls_refused_before_a_pool_are_counted(self) -> None:
        refused = "snakepit_calls_refused_total"
        cases = [
            (self.request("faults.nope"), grpc.StatusCode.NOT_FOUND,
             "unknown_function"),
            (self.request("faults.add", pool="nope"),
             grpc.StatusCode.NOT_FOUND, "unknown_pool"),
            (python_client.pb.CallRequest(
                function="faults.add",
                args=python_client.pb.Payload(
                    content_type="application/json", data=b"{")),
             grpc.StatusCode.INVALID_ARGUMENT, None),
        ]
        for request, code, reason in cases:
            labels = {"code": code.name}
            if reason is not None:
                labels["reason"] = reason
            before = self.metric(refused, **labels)
            with self.assertRaises(grpc.RpcError) as caught:
                self.call(request, timeout=30)
            self.assertEqual(caught.exception.code(), code)
            self.assertEqual(self.metric(refused, **labels), before + 1,
                             labels)

    def test_deadlines_count_as_deadlines_and_cancels_as_cancels(
            self) -> None:
        calls = "snakepit_calls_total"
        late = {"function": "faults.sleep", "code": "DEADLINE_EXCEEDED"}
        late_stream = {"function": "faults.ticker",
                       "code": "DEADLINE_EXCEEDED"}
        cancelled = {"function": "faults.ticker", "code": "CANCELLED"}
        before = [self.metric(calls, **late),
                  self.metric(calls, **late_stream),
                  self.metric(calls, **cancelled)]
        for _ in range(4):
            with self.assertRaises(grpc.RpcError) as caught:
                self.call(self.request("faults.sleep", [2]), timeout=0.3)
            self.assertEqual(caught.exception.code(),
                             grpc.StatusCode.DEADLINE_EXCEEDED)
        for _ in range(2):
            chunks = self.stream(self.request("faults.ticker", [50, 0.05]),
                                 timeout=0.4)
            with self.assertRaises(grpc.RpcError) as caught:
                list(chunks)
            self.assertEqual(caught.exception.code(),
                             grpc.StatusCode.DEADLINE_EXCEEDED)
        chunks = self.stream(self.request("faults.ticker", [50, 0.05]),
                             timeout=30)
        next(chunks)
        chunks.cancel()

        self.await_metric(before[0] + 4, calls, **late)
        self.await_metric(before[1] + 2, calls, **late_stream)
        self.await_metric(before[2] + 1, calls, **cancelled)

    def codes(self, function: str) -> dict:
        """snakepit_calls_total of `function`, by code."""
        found: dict = {}
        for sample in self.samples("snakepit_calls_total",
                                   function=function):
            code = sample.labels["code"]
            found[code] = found.get(code, 0) + sample.value
        return found

    def await_codes(self, function: str, before: dict, want: dict) -> None:
        """Waits up to 10 s for `function`'s counts to grow by `want`."""
        def grown() -> dict:
            now = self.codes(function)
            return {k: now[k] - before.get(k, 0) for k in now
                    if now[k] != before.get(k, 0)}
        deadline = time.monotonic() + 10
        while grown() != want and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(grown(), want)

    def test_a_cancel_while_the_node_reads_the_reply_counts_once(
            self) -> None:
        # Quick calls: the node's thread then reads the worker's reply
        # itself, and the client's cancel reaches the node meanwhile.
        for _ in range(5):
            self.call(self.request("faults.sleep", [0.001]), timeout=30)
        before = self.codes("faults.sleep")
        client: dict = {}
        for _ in range(30):
            future = self.call.future(self.request("faults.sleep", [0.003]),
                                      timeout=30)
            time.sleep(0.001)
            future.cancel()
            try:
                future.result()
                code = "OK"
            except grpc.FutureCancelledError:
                code = "CANCELLED"
            except grpc.RpcError as error:
                code = error.code().name
            client[code] = client.get(code, 0) + 1
        self.await_codes("faults.sleep", before, client)

    def test_an_answer_after_the_deadline_counts_as_the_deadline(
            self) -> None:
        before = self.codes("faults.sleep")
        for _ in range(20):
            with self.assertRaises(grpc.RpcError) as caught:
                self.call(self.request("faults.sleep", [0.027]),
                          timeout=0.025)
            self.assertEqual(caught.exception.code(),
                             grpc.StatusCode.DEADLINE_EXCEEDED)
        self.await_codes("faults.sleep", before, {"DEADLINE_EXCEEDED": 20})

    def test_a_stream_counts_the_status_its_client_gets(self) -> None:
        calls = "snakepit_calls_total"
        labels = {"function": "faults.deep", "code": "INVALID_ARGUMENT"}
        ok = self.metric(calls, function="faults.deep", code="OK")
        before = self.metric(calls, **labels)
        chunks = self.stream(self.request("faults.deep", [300]), timeout=30)
        with self.assertRaises(grpc.RpcError) as caught:
            list(chunks)
        self.assertEqual(caught.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT)

        self.await_metric(before + 1, calls, **labels)
        self.assertEqual(self.metric(calls, function="faults.deep",
                                     code="OK"), ok)


class QueueWaitMetricTest(unittest.TestCase):
    def test_a_call_that_expires_in_the_queue_counts_its_wait(self) -> None:
        node = Node(workers=1)
        try:
            client = python_client.Client(node.addr)
            busy = subprocess.Popen(
                [CLI, "call", "faults.sleep", "--addr", node.addr,
                 "--json", "[1.5]"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            time.sleep(0.3)  # the one worker is taken

            def waited() -> float:
                total = 0.0
                for line in node.http("/metrics")[1].splitlines():
                    if line.startswith("snakepit_queue_wait_seconds_sum"):
                        total += float(line.split()[-1])
                return total

            before = waited()
            with self.assertRaises(python_client.SnakepitError) as caught:
                client.call("faults.add", {"a": 1}, timeout=0.5)
            self.assertEqual(caught.exception.code,
                             grpc.StatusCode.DEADLINE_EXCEEDED)
            deadline = time.monotonic() + 10
            while waited() - before < 0.3 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertGreaterEqual(waited() - before, 0.3)
            self.assertEqual(busy.wait(timeout=30), 0)
            client.close()
        finally:
            logs = node.logs()
            self.assertEqual(node.stop(), 0, logs)


class AuthTest(unittest.TestCase):
    def test_without_the_token_no_worker_sees_the_call(self) -> None:
        node = Node("--token", "s3cret", workers=1)
        try:
            marker = os.path.join(node.dir, "touched")
            anonymous = python_client.Client(node.addr)
            with self.assertRaises(python_client.SnakepitError) as caught:
                anonymous.call("faults.touch", {"path": marker})
            self.assertEqual(caught.exception.code,
                             grpc.StatusCode.UNAUTHENTICATED)
            wrong = python_client.Client(node.addr, token="guess")
            with self.assertRaises(python_client.SnakepitError):
                wrong.call("faults.touch", {"path": marker})
            self.assertFalse(os.path.exists(marker))
            r = cli("call", "faults.touch", "--addr", node.addr, "-a",
                    f"path={marker}")
            self.assertEqual(r.returncode, 3)
            self.assertIn("unauthenticated", r.stderr)
            authorised = python_client.Client(node.addr, token="s3cret")
            self.assertEqual(authorised.call("faults.touch",
                                             {"path": marker}), marker)
            self.assertTrue(os.path.exists(marker))
            text = node.http("/metrics")[1]
            self.assertIn('snakepit_calls_refused_total{code="UNAUTHENTICATED"'
                          ',reason="unauthenticated"} 3', text)
        finally:
            self.assertEqual(node.stop(), 0)


class TlsTest(unittest.TestCase):
    def test_tls_node_answers_a_client_that_trusts_its_certificate(self):
        folder = tempfile.mkdtemp(prefix="snakepit-tls-")
        key = os.path.join(folder, "key.pem")
        cert = os.path.join(folder, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                        "-nodes", "-keyout", key, "-out", cert, "-days",
                        "1", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=IP:127.0.0.1"], check=True,
                       capture_output=True, timeout=60)
        config = os.path.join(folder, "tls.toml")
        with open(config, "w") as f:
            f.write(f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
                    f'[[pool]]\nname = "t"\nmodules = ["{FAULTS}"]\n'
                    f'python = "{PY}"\nsize = 1\n')
        node = Node(config=config)
        try:
            r = cli("call", "faults.add", "--addr", node.addr, "--tls-ca",
                    cert, "-a", "a=20", "-a", "b=22")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout), 42)
            # Without the CA the client cannot connect.
            r = cli("call", "faults.add", "--addr", node.addr, "-a", "a=1",
                    "--timeout", "2s")
            self.assertEqual(r.returncode, 2)
        finally:
            self.assertEqual(node.stop(), 0)


class QueueTest(unittest.TestCase):
    def test_queue_full_fails_at_once(self) -> None:
        config = os.path.join(tempfile.mkdtemp(), "node.toml")
        with open(config, "w") as f:
            f.write(f'[[pool]]\nname = "small"\nmodules = ["{FAULTS}"]\n'
                    f'python = "{PY}"\nsize = 1\nmax_queue = 1\n')
        node = Node(config=config)
        try:
            client = python_client.Client(node.addr)
            busy = [client._call.future(client._request(
                "faults.sleep", {"seconds": 1}), timeout=20)
                for _ in range(2)]  # one runs, one waits
            time.sleep(0.2)
            start = time.monotonic()
            with self.assertRaises(python_client.SnakepitError) as caught:
                client.call("faults.sleep", {"seconds": 1}, timeout=20)
            self.assertLess(time.monotonic() - start, 0.5)
            self.assertEqual(caught.exception.code,
                             grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertEqual(caught.exception.reason, "queue_full")
            for f in busy:
                f.result()
        finally:
            self.assertEqual(node.stop(), 0)


class LongCallTest(unittest.TestCase):
    """Threads that answer Call read a quick call's reply themselves, for
    a bounded time: long calls, cancels and deadlines work around that."""

    WIDE = 16  # workers of the pool the long calls go to

    @classmethod
    def setUpClass(cls) -> None:
        config = os.path.join(tempfile.mkdtemp(), "node.toml")
        with open(config, "w") as f:
            for name, size in (("wide", cls.WIDE), ("quick", 1)):
                f.write(f'[[pool]]\nname = "{name}"\n'
                        f'modules = ["{FAULTS}"]\npython = "{PY}"\n'
                        f'size = {size}\n')
        cls.node = Node(config=config)
        cls.client = python_client.Client(cls.node.addr)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        code = cls.node.stop()
        if code != 0:
            raise AssertionError(f"node exited {code}:\n{cls.node.logs()}")

    def request(self, function: str, args: dict, pool: str = ""):
        request = self.client._request(function, args)
        request.pool = pool
        return request

    def call_quick_pool(self, function: str, args: dict,
                        timeout: float = 30):
        response = self.client._call(self.request(function, args, "quick"),
                                     timeout=timeout)
        return json.loads(response.result.data)

    def wait_until_quick_pool_idle(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = cli("node", "info", "--addr", self.node.addr, "-o", "json")
            pools = {p["name"]: p for p in json.loads(r.stdout)["pools"]}
            if pools["quick"]["ready"] == 1 and pools["quick"]["busy"] == 0:
                return
            time.sleep(0.05)
        self.fail("the quick pool's worker did not come back")

    def test_64_one_second_calls_take_64_over_workers_seconds(self) -> None:
        # A quick call first: the node then reads the next long calls'
        # replies itself until it learns they are long, and must give up
        # on each within its bound rather than hold a thread for 1 s.
        self.assertEqual(self.client.call("faults.sleep", {"seconds": 0}),
                         0)
        start = time.monotonic()
        long_calls = [self.client._call.future(
            self.request("faults.sleep", {"seconds": 1}), timeout=60)
            for _ in range(64)]
        # Small calls to the other pool are answered meanwhile.
        slowest = 0.0
        small = 0
        while (not all(f.done() for f in long_calls)
               and time.monotonic() - start < 30):
            t0 = time.monotonic()
            self.assertEqual(self.call_quick_pool("faults.add", {"a": small}),
                             small)
            slowest = max(slowest, time.monotonic() - t0)
            small += 1
            time.sleep(0.02)
        for f in long_calls:
            self.assertEqual(json.loads(f.result().result.data), 1)
        took = time.monotonic() - start
        expected = 64 / self.WIDE
        self.assertGreaterEqual(took, expected * 0.95)
        self.assertLess(took, expected * 1.5 + 1, "calls were serialized")
        self.assertGreater(small, 10)
        self.assertLess(slowest, 1.0, "small calls waited for long ones")

    def test_cancelling_a_call_the_node_was_reading(self) -> None:
        self.assertEqual(self.call_quick_pool("faults.sleep",
                                              {"seconds": 0}), 0)
        before = self.call_quick_pool("faults.pid", {})
        future = self.client._call.future(self.request(
            "faults.sleep", {"seconds": 30}, "quick"), timeout=60)
        time.sleep(0.3)
        self.assertTrue(future.cancel())
        with self.assertRaises(grpc.FutureCancelledError):
            future.result()
        # The worker was told to stop and, as time.sleep ignores that,
        # replaced after the cancel grace: long before the 30 s are up.
        self.wait_until_quick_pool_idle()
        self.assertNotEqual(self.call_quick_pool("faults.pid", {}), before)

    def test_deadline_within_the_drive_bound(self) -> None:
        self.assertEqual(self.call_quick_pool("faults.sleep",
                                              {"seconds": 0}), 0)
        start = time.monotonic()
        with self.assertRaises(grpc.RpcError) as caught:
            self.call_quick_pool("faults.sleep", {"seconds": 3},
                                 timeout=0.003)
        self.assertEqual(caught.exception.code(),
                         grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - start, 1.0)
        self.wait_until_quick_pool_idle()
        self.assertEqual(self.call_quick_pool("faults.add", {"a": 7}), 7)


class ShutdownTest(unittest.TestCase):
    def test_sigterm_drains_calls_then_exits_zero(self) -> None:
        node = Node(workers=4)
        client = python_client.Client(node.addr)
        pids = node.worker_pids()
        self.assertEqual(len(pids), 4)
        calls = [client._call.future(client._request(
            "faults.sleep", {"seconds": 1.5}), timeout=30)
            for _ in range(4)]
        time.sleep(0.3)
        node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status, _ = node.http("/readyz")
        self.assertEqual(status, 503)
        for f in calls:
            self.assertEqual(json.loads(f.result().result.data), 1.5)
        self.assertEqual(node.proc.wait(timeout=30), 0, node.logs())
        for pid in pids:
            self.assertFalse(alive(pid), f"worker {pid} outlived the node")
        node.log.close()

    def test_sigterm_after_a_cancelled_slow_stream(self) -> None:
        node = Node(workers=2)
        client = python_client.Client(node.addr)
        marker = os.path.join(node.dir, "closed")
        chunks = client.stream("faults.guarded_ticker",
                               {"marker": marker, "interval": 0.01})
        for _ in range(6):
            next(chunks)
        time.sleep(0.5)  # the node keeps producing; we do not read
        chunks.close()
        node.proc.send_signal(signal.SIGTERM)
        self.assertEqual(node.proc.wait(timeout=15), 0, node.logs())
        node.log.close()

    def test_sigkill_of_the_node_ends_its_workers(self) -> None:
        node = Node(workers=3)
        pids = node.worker_pids()
        self.assertEqual(len(pids), 3)
        client = python_client.Client(node.addr)
        pids.append(client.call("faults.spawn_sleeper", timeout=10))
        node.proc.kill()
        node.proc.wait(timeout=10)
        deadline = time.monotonic() + 2
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse([p for p in pids if alive(p)])
        node.log.close()


if __name__ == "__main__":
    unittest.main()
