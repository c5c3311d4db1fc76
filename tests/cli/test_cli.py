"""The snakepit CLI and the C++ example, run as a user runs them."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import tempfile
import unittest

BIN = os.environ.get("SNAKEPIT_BIN", "build/snakepit")
EXAMPLE = os.environ.get("SNAKEPIT_EXAMPLE", "build/cpp_example")
ROOT = os.environ.get("SNAKEPIT_ROOT", os.getcwd())
LAB = os.path.join(ROOT, "examples", "lab.py")
FAULTS = os.path.join(ROOT, "tests", "pool", "fixtures", "faults.py")
BROKEN = os.path.join(ROOT, "tests", "pool", "fixtures", "broken_import.py")
PY = "/usr/bin/python3"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], capture_output=True, text=True,
                          timeout=timeout)


def call(function: str, *args: str, module: str = FAULTS,
         timeout: float = 120) -> subprocess.CompletedProcess:
    return run("call", function, "--module", module, "--python", PY, *args,
               timeout=timeout)


class CallTest(unittest.TestCase):
    def test_prints_the_result_as_json_and_exits_0(self) -> None:
        r = call("faults.add", "--json", '{"a": 2, "b": 40}')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), 42)

    def test_assignments_read_json_or_text(self) -> None:
        r = call("faults.echo", "-a", "value=[1, 2.5, true]")
        self.assertEqual(json.loads(r.stdout), [1, 2.5, True])
        r = call("faults.echo", "-a", "value=plain words")
        self.assertEqual(json.loads(r.stdout), "plain words")

    def test_positional_json_array(self) -> None:
        r = call("faults.add", "--json", "[3, 4]")
        self.assertEqual(json.loads(r.stdout), 7, r.stderr)

    def test_non_finite_floats_and_bytes_survive_the_edge(self) -> None:
        r = call("faults.floats")
        self.assertEqual(r.returncode, 0, r.stderr)
        values = json.loads(r.stdout)  # Python reads NaN and Infinity
        self.assertTrue(math.isnan(values[0]))
        self.assertEqual(values[1:3], [math.inf, -math.inf])
        self.assertEqual(math.copysign(1, values[3]), -1)
        r = call("faults.echo", "--json", '{"value": {"$bytes": "AP+A"}}')
        self.assertEqual(json.loads(r.stdout), {"$bytes": "AP+A"})

    def test_python_exception_exits_3_with_reason_and_traceback(self) -> None:
        r = call("faults.raise_two_arg")
        self.assertEqual(r.returncode, 3)
        self.assertEqual(r.stdout, "")
        self.assertIn("error: python_exception: faults.TwoArgError", r.stderr)
        self.assertIn("Traceback", r.stderr)

    def test_unknown_function_exits_3(self) -> None:
        r = call("faults.missing")
        self.assertEqual(r.returncode, 3)
        self.assertIn("error: unknown_function:", r.stderr)

    def test_bad_json_is_a_usage_error(self) -> None:
        r = call("faults.add", "--json", '{"a": 1,}')
        self.assertEqual(r.returncode, 1)
        self.assertIn("error: invalid_argument: --json: invalid JSON",
                      r.stderr)
        r = call("faults.add", "--json", "5")
        self.assertEqual(r.returncode, 1)
        r = call("faults.add", "-a", "novalue")
        self.assertEqual(r.returncode, 1)

    def test_json_arguments_from_a_file_or_standard_input(self) -> None:
        # 3 MiB of bytes: far past what one command-line argument holds.
        data = bytes(range(256)) * (3 << 12)
        args = json.dumps({"data": {"$bytes": base64.b64encode(
            data).decode()}})
        want = {"len": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "args.json")
            with open(path, "w") as f:
                f.write(args)
            r = call("faults.byte_len", "--json", "@" + path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout), want)
            r = call("faults.byte_len", "--json", "@" + path + ".missing")
            self.assertEqual(r.returncode, 1)
            self.assertIn("error: invalid_argument: --json @", r.stderr)
        r = subprocess.run([BIN, "call", "faults.byte_len", "--module",
                            FAULTS, "--python", PY, "--json", "-"],
                           input=args, capture_output=True, text=True,
                           timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), want)

    def test_bad_flags_are_usage_errors(self) -> None:
        self.assertEqual(run("call").returncode, 1)
        self.assertEqual(run("frobnicate").returncode, 1)
        r = call("faults.add", "--timeout", "soon")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--timeout", r.stderr)

    def test_pool_that_cannot_start_exits_2(self) -> None:
        r = run("call", "broken_import.f", "--module", BROKEN, "--python",
                PY)
        self.assertEqual(r.returncode, 2)
        self.assertIn("error: import_error:", r.stderr)
        self.assertIn("fails at import", r.stderr)
        r = run("call", "x.f", "--module", "/nonexistent/x.py")
        self.assertEqual(r.returncode, 2)
        r = run("call", "faults.add", "--module", FAULTS, "--python",
                "/nonexistent/python")
        self.assertEqual(r.returncode, 2)

    def test_timeout_exits_3_with_deadline_exceeded(self) -> None:
        r = call("faults.sleep", "-a", "seconds=10", "--timeout", "500ms")
        self.assertEqual(r.returncode, 3)
        self.assertIn("error: deadline_exceeded:", r.stderr)

    def test_stream_prints_one_line_per_chunk(self) -> None:
        r = call("faults.ticker", "-a", "n=4", "-a", "interval=0", "--stream")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([json.loads(x) for x in r.stdout.splitlines()],
                         [0, 1, 2, 3])

    def test_worker_output_goes_to_stderr_log_not_stdout(self) -> None:
        r = call("faults.chatty", "-a", "i=3")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), 6)
        self.assertIn("stdout: print 3", r.stderr)

    def test_output_is_json_when_piped(self) -> None:
        r = call("lab.stats", "--json", '{"values": [1, 2, 3]}', module=LAB)
        self.assertEqual(json.loads(r.stdout)["median"], 2.0)

    def test_module_and_addr_together_is_a_usage_error(self) -> None:
        r = call("faults.add", "--addr", "127.0.0.1:1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not both", r.stderr)

    def test_several_modules(self) -> None:
        r = run("fn", "list", "--module", FAULTS, "--module", LAB,
                "--python", PY, "-o", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        names = {f["name"] for f in json.loads(r.stdout)}
        self.assertIn("faults.add", names)
        self.assertIn("lab.train_digits", names)


class ExampleTest(unittest.TestCase):
    def test_fn_list_shows_signatures_and_docs(self) -> None:
        r = run("fn", "list", "--module", LAB, "--python", PY, "-o",
                "table")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("lab.word_count(path: str = ", r.stdout)
        self.assertIn("most frequent words", r.stdout)
        self.assertIn("[generator]", r.stdout)

    def test_trains_and_predicts_digits(self) -> None:
        r = call("lab.train_digits", module=LAB)
        self.assertEqual(r.returncode, 0, r.stderr)
        result = json.loads(r.stdout)
        self.assertGreater(result["accuracy"], 0.9)
        r = call("lab.predict_digits", "--json", '{"indices": [0, 1, 2]}',
                 module=LAB)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = json.loads(r.stdout)
        self.assertEqual([row["actual"] for row in rows], [0, 1, 2])

    def test_word_count_over_a_debian_text(self) -> None:
        r = call("lab.word_count", "-a", "top=3", module=LAB)
        self.assertEqual(r.returncode, 0, r.stderr)
        result = json.loads(r.stdout)
        self.assertEqual(result["top"][0]["word"], "the")
        self.assertGreater(result["words"], 5000)

    def test_table_output(self) -> None:
        r = call("lab.stats", "--json", '{"values": [1, 2, 3]}', "-o",
                 "table", module=LAB)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"median\s+2\.0")

    def test_cpp_example_runs(self) -> None:
        r = subprocess.run([EXAMPLE, LAB, PY], capture_output=True,
                           text=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("trained:", r.stdout)
        self.assertEqual(r.stdout.count("chunk:"), 4)


if __name__ == "__main__":
    unittest.main()
