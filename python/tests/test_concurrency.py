"""Tests of a worker that runs several calls at once (--max-concurrency).

Workers start as in test_worker.py (real processes, frames built by hand);
here the test plays a host that keeps several calls in flight on one
worker. Timing bounds are generous: they catch calls that ran one after
another, not slow machines. Every wait is bounded.
"""

from __future__ import annotations

import os
import sys
import time
import unittest
from pathlib import Path
from typing import Any, Dict, Iterable, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_worker import (CANCEL, CHUNK, CODEC, ERROR, FATAL,  # noqa: E402
                         GOODBYE, HELLO, LOG, READY, RESULT, TIMEOUT, Frame,
                         Worker, WorkerTestCase, send_frame)

SESSION_READ, SESSION_REPLY, SESSION_END = 40, 42, 43

MOD = "sp_fixture_concur"


class Outcome:
    """What one call sent: its chunks, logs and final frame."""

    def __init__(self) -> None:
        self.chunks: List[Any] = []
        self.logs: List[str] = []
        self.final: Any = None

    def value(self) -> Any:
        assert self.final.type == RESULT, self.final
        return self.final.value()


def collect(worker: Worker, ids: Iterable[int]) -> Dict[int, Outcome]:
    """Reads frames until every call in `ids` has sent its final frame."""
    outcomes = {fid: Outcome() for fid in ids}
    left = set(outcomes)
    for _ in range(10000):
        if not left:
            return outcomes
        frame = worker.recv()
        assert frame.id in outcomes, frame
        assert frame.id in left, f"a frame after the final one: {frame}"
        outcome = outcomes[frame.id]
        if frame.type == CHUNK:
            outcome.chunks.append(frame.value())
        elif frame.type == LOG:
            outcome.logs.append(frame.header["message"])
        else:
            assert frame.type in (RESULT, ERROR), frame
            outcome.final = frame
            left.discard(frame.id)
    raise AssertionError(f"calls {sorted(left)} did not end")


def reply(worker: Worker, fid: int, variables: Dict[str, Any],
          version: int = 1) -> None:
    worker.send(SESSION_REPLY, fid, {"ok": True, "version": version},
                CODEC.encode(variables))


def wait_for_file(path: str) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


class ConcurrencyTestCase(WorkerTestCase):
    def start_n(self, n: int, *modules: str) -> Worker:
        return self.start(MOD, *modules, args=["--max-concurrency", str(n)])

    def expect_fatal(self, worker: Worker, reason: str) -> Dict[str, Any]:
        """Skips other frames up to FATAL; checks it and the exit."""
        for _ in range(1000):
            frame = worker.recv()
            if frame.type == FATAL:
                break
        self.assertEqual(frame.header["reason"], reason)
        self.assertEqual(worker.wait(), 3)
        return frame.header


# The option and READY -------------------------------------------------------

class OptionTest(ConcurrencyTestCase):
    def test_ready_announces_max_concurrency(self) -> None:
        for args, expected in (([], 1), (["--max-concurrency", "1"], 1),
                               (["--max-concurrency", "8"], 8),
                               (["--max-concurrency", "256"], 256)):
            worker = self.start(MOD, args=args, handshake=False)
            self.assertEqual(worker.recv().type, HELLO)
            ready = worker.recv()
            self.assertEqual(ready.type, READY)
            self.assertEqual(ready.header["max_concurrency"], expected)
            self.assertIn("functions", ready.header)

    def test_out_of_range_is_a_usage_error(self) -> None:
        for value in ("0", "257", "-1", "x"):
            worker = self.start(MOD, args=["--max-concurrency", value],
                                handshake=False)
            self.assertEqual(worker.wait(), 2, value)
            worker.stderr.join(TIMEOUT)
            self.assertIn("--max-concurrency", worker.stderr.text())


# Running calls at once ------------------------------------------------------

class ParallelTest(ConcurrencyTestCase):
    def test_eight_sync_sleeps_overlap(self) -> None:
        worker = self.start_n(8)
        began = time.monotonic()
        for fid in range(1, 9):
            worker.call(f"{MOD}.nap", [1.0, f"t{fid}"], fid=fid)
        outcomes = collect(worker, range(1, 9))
        elapsed = time.monotonic() - began
        self.assertLess(elapsed, 4.0)
        threads = set()
        for fid, outcome in outcomes.items():
            tag, thread = outcome.value()
            self.assertEqual(tag, f"t{fid}")
            self.assertTrue(thread.startswith("snakepit-call"), thread)
            threads.add(thread)
        self.assertEqual(len(threads), 8)

    def test_eight_async_sleeps_overlap(self) -> None:
        worker = self.start_n(8)
        began = time.monotonic()
        for fid in range(11, 19):
            worker.call(f"{MOD}.async_nap", [1.0, f"a{fid}"], fid=fid)
        outcomes = collect(worker, range(11, 19))
        self.assertLess(time.monotonic() - began, 4.0)
        for fid, outcome in outcomes.items():
            self.assertEqual(outcome.value(), [f"a{fid}", "snakepit-loop"])

    def test_sync_and_async_calls_share_the_slots(self) -> None:
        worker = self.start_n(4)
        began = time.monotonic()
        worker.call(f"{MOD}.nap", [1.0, "s1"], fid=1)
        worker.call(f"{MOD}.async_nap", [1.0, "a2"], fid=2)
        worker.call(f"{MOD}.nap", [1.0, "s3"], fid=3)
        worker.call(f"{MOD}.async_nap", [1.0, "a4"], fid=4)
        outcomes = collect(worker, range(1, 5))
        self.assertLess(time.monotonic() - began, 3.0)
        self.assertEqual([outcomes[i].value()[0] for i in range(1, 5)],
                         ["s1", "a2", "s3", "a4"])

    def test_streams_interleave_and_stay_in_order(self) -> None:
        worker = self.start_n(4)
        worker.call(f"{MOD}.steps", [20, "g1"], fid=1)
        worker.call(f"{MOD}.async_steps", [20, "g2"], fid=2)
        worker.call(f"{MOD}.steps", [20, "g3"], fid=3)
        worker.call(f"{MOD}.async_steps", [20, "g4"], fid=4)
        outcomes = collect(worker, range(1, 5))
        for fid, outcome in outcomes.items():
            self.assertEqual(outcome.chunks,
                             [[f"g{fid}", i] for i in range(20)])
        self.assertEqual(outcomes[1].value(), "g1")
        self.assertIsNone(outcomes[2].value())

    def test_logs_carry_their_call_id(self) -> None:
        worker = self.start_n(3)
        for fid in (1, 2, 3):
            worker.call(f"{MOD}.log_twice", [f"L{fid}"], fid=fid)
        outcomes = collect(worker, (1, 2, 3))
        for fid, outcome in outcomes.items():
            self.assertEqual(outcome.logs, [f"L{fid} first",
                                            f"L{fid} second"])
            self.assertEqual(outcome.value(), f"L{fid}")

    def test_slots_free_up_for_more_calls(self) -> None:
        worker = self.start_n(2)
        for round_ in range(20):
            ids = (2 * round_ + 1, 2 * round_ + 2)
            for fid in ids:
                worker.call(f"{MOD}.nap", [0, str(fid)], fid=fid)
            outcomes = collect(worker, ids)
            self.assertEqual([outcomes[f].value()[0] for f in ids],
                             [str(f) for f in ids])

    def test_a_slot_is_free_as_soon_as_its_final_frame_is_read(self) -> None:
        # A host that sends the next CALL the moment it reads a final
        # frame keeps the worker exactly full: it must never see N + 1.
        worker = self.start_n(8)
        kinds = [("nap", [0, "s"]), ("async_nap", [0, "a"]),
                 ("steps", [2, "g"]), ("async_steps", [2, "h"])]
        total, sent, ended = 400, 0, set()

        def send_next() -> None:
            nonlocal sent
            sent += 1
            fn, args = kinds[sent % len(kinds)]
            worker.call(f"{MOD}.{fn}", args, fid=sent)

        for _ in range(8):
            send_next()
        for _ in range(10 * total):
            if len(ended) == total:
                break
            frame = worker.recv()
            self.assertNotEqual(frame.type, FATAL, frame.header)
            if frame.type in (RESULT, ERROR):
                self.assertEqual(frame.type, RESULT, frame.header)
                self.assertNotIn(frame.id, ended)
                ended.add(frame.id)
                if sent < total:
                    send_next()
        self.assertEqual(ended, set(range(1, total + 1)))
        self.assertEqual(worker.ping(1).header, {"busy": False})

    def test_errors_end_only_their_call(self) -> None:
        worker = self.start_n(3)
        worker.call(f"{MOD}.nap", [0.3, "ok"], fid=1)
        worker.call("no.such.function", [], fid=2)
        worker.call(f"{MOD}.nap", ["not a number", "x"], fid=3)
        outcomes = collect(worker, (1, 2, 3))
        self.assertEqual(outcomes[1].value()[0], "ok")
        self.assertEqual(outcomes[2].final.header["reason"],
                         "unknown_function")
        self.assertEqual(outcomes[3].final.header["reason"],
                         "python_exception")

    def test_ping_is_busy_while_any_call_runs(self) -> None:
        worker = self.start_n(4)
        worker.call(f"{MOD}.wait_for_cancel", [TIMEOUT], fid=1)
        worker.wait_busy()
        send_frame(worker.ctl, CANCEL, 1)
        collect(worker, (1,))
        self.assertEqual(worker.ping(5).header, {"busy": False})


# Cancellation ---------------------------------------------------------------

class CancelTest(ConcurrencyTestCase):
    def test_cancelling_one_sync_call_leaves_the_others(self) -> None:
        worker = self.start_n(4)
        for fid in range(1, 5):
            worker.call(f"{MOD}.wait_for_cancel", [1.5], fid=fid)
        worker.wait_busy()
        send_frame(worker.ctl, CANCEL, 3)
        first = worker.recv()
        self.assertEqual(first.id, 3)
        if first.type == RESULT:  # it ran and saw ctx.cancelled
            self.assertEqual(first.value(), {"call_id": 3, "cancelled": True})
        else:  # still waiting for its thread: it never ran
            self.assertEqual(first.header["reason"], "cancelled")
        outcomes = collect(worker, (1, 2, 4))
        for fid, outcome in outcomes.items():
            self.assertEqual(outcome.value(),
                             {"call_id": fid, "cancelled": False})

    def test_cancelling_one_async_call_leaves_the_others(self) -> None:
        worker = self.start_n(4)
        for fid in range(1, 5):
            worker.call(f"{MOD}.async_nap", [1.5, str(fid)], fid=fid)
        worker.wait_busy()
        send_frame(worker.ctl, CANCEL, 2)
        first = worker.recv()
        self.assertEqual((first.type, first.id), (ERROR, 2))
        self.assertEqual(first.header["reason"], "cancelled")
        outcomes = collect(worker, (1, 3, 4))
        for fid, outcome in outcomes.items():
            self.assertEqual(outcome.value()[0], str(fid))

    def test_cancelling_one_stream_leaves_the_others(self) -> None:
        worker = self.start_n(2)
        worker.call(f"{MOD}.steps", [30, "a"], fid=1)
        worker.call(f"{MOD}.async_steps", [30, "b"], fid=2)
        send_frame(worker.ctl, CANCEL, 1)
        outcomes = collect(worker, (1, 2))
        self.assertEqual(outcomes[1].final.header["reason"], "cancelled")
        self.assertEqual(len(outcomes[2].chunks), 30)

    def test_cancel_that_overtakes_its_call_still_applies(self) -> None:
        worker = self.start_n(4)
        send_frame(worker.ctl, CANCEL, 7)
        worker.ping(1)  # The control thread has seen the CANCEL.
        worker.call(f"{MOD}.async_nap", [TIMEOUT, "x"], fid=7)
        worker.call(f"{MOD}.nap", [0, "y"], fid=8)
        outcomes = collect(worker, (7, 8))
        self.assertEqual(outcomes[7].final.header["reason"], "cancelled")
        self.assertEqual(outcomes[8].value()[0], "y")


# Sessions -------------------------------------------------------------------

class SessionTest(ConcurrencyTestCase):
    def read_request(self, worker: Worker) -> Frame:
        frame = worker.recv()
        self.assertEqual(frame.type, SESSION_READ, frame)
        return frame

    def test_each_call_gets_its_own_session_reply(self) -> None:
        worker = self.start_n(4)
        worker.call(f"{MOD}.read_variable", ["v"], fid=1,
                    header={"session": "s1"})
        worker.call(f"{MOD}.async_read_variable", ["v"], fid=2,
                    header={"session": "s2"})
        worker.call(f"{MOD}.read_variable", ["v"], fid=3,
                    header={"session": "s1"})
        requests = {}
        for _ in range(3):
            frame = self.read_request(worker)
            requests[frame.id] = frame.header["session"]
        self.assertEqual(requests, {1: "s1", 2: "s2", 3: "s1"})
        # Replies in another order than the requests.
        for fid in (3, 2, 1):
            reply(worker, fid, {"v": f"for {fid}"})
        outcomes = collect(worker, (1, 2, 3))
        for fid, outcome in outcomes.items():
            self.assertEqual(outcome.value(), f"for {fid}")

    def test_reply_for_a_call_that_waits_for_none_is_fatal(self) -> None:
        worker = self.start_n(4)
        worker.call(f"{MOD}.read_variable", ["v"], fid=1,
                    header={"session": "s1"})
        self.read_request(worker)
        reply(worker, 2, {})
        self.expect_fatal(worker, "protocol_error")

    def test_session_end_waits_for_the_calls_of_its_session(self) -> None:
        worker = self.start_n(4)
        marker = self.temp_path("ended")
        release = self.temp_path("release")
        worker.result(f"{MOD}.set_end_marker", [marker], fid=1)
        worker.call(f"{MOD}.hold_session", [release], fid=2,
                    header={"session": "s1"})
        worker.wait_busy()
        worker.send(SESSION_END, 0, {"session": "s1"})
        # Other calls go on, and a new call in s1 starts afresh.
        self.assertEqual(worker.result(f"{MOD}.local_keys", [], fid=3,
                                       header={"session": "s1"}), [])
        self.assertFalse(os.path.exists(marker))
        with open(release, "w"):
            pass
        self.assertEqual(collect(worker, (2,))[2].value(), "released")
        self.assertTrue(wait_for_file(marker))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with open(marker) as f:
                text = f.read()
            if text.endswith("\n"):
                break
            time.sleep(0.01)
        self.assertEqual(text, "s1 ['held']\n")

    def test_session_end_with_no_call_of_it_runs_at_once(self) -> None:
        worker = self.start_n(4)
        marker = self.temp_path("ended")
        release = self.temp_path("release")
        worker.result(f"{MOD}.set_end_marker", [marker], fid=1)
        with open(release, "w"):
            pass
        self.assertEqual(worker.result(f"{MOD}.hold_session", [release],
                                       fid=2, header={"session": "s9"}),
                         "released")
        worker.call(f"{MOD}.wait_for_cancel", [TIMEOUT], fid=3)
        worker.send(SESSION_END, 0, {"session": "s9"})
        self.assertTrue(wait_for_file(marker))
        send_frame(worker.ctl, CANCEL, 3)
        self.assertTrue(collect(worker, (3,))[3].value()["cancelled"])


# Limits on calls in flight --------------------------------------------------

class LimitTest(ConcurrencyTestCase):
    def test_a_call_beyond_n_is_a_protocol_error(self) -> None:
        worker = self.start_n(8)
        for fid in range(1, 9):
            worker.call(f"{MOD}.wait_for_cancel", [TIMEOUT], fid=fid)
        worker.call(f"{MOD}.nap", [0, "ninth"], fid=9)
        header = self.expect_fatal(worker, "protocol_error")
        self.assertIn("--max-concurrency 8", header["message"])

    def test_a_running_id_again_is_a_protocol_error(self) -> None:
        worker = self.start_n(8)
        worker.call(f"{MOD}.wait_for_cancel", [TIMEOUT], fid=5)
        worker.call(f"{MOD}.nap", [0, "again"], fid=5)
        header = self.expect_fatal(worker, "protocol_error")
        self.assertIn("CALL 5", header["message"])


# GOODBYE --------------------------------------------------------------------

class GoodbyeTest(ConcurrencyTestCase):
    def test_goodbye_lets_running_calls_finish(self) -> None:
        worker = self.start_n(4)
        worker.call(f"{MOD}.nap", [0.3, "s"], fid=1)
        worker.call(f"{MOD}.async_nap", [0.3, "a"], fid=2)
        worker.call(f"{MOD}.steps", [5, "g"], fid=3)
        worker.send(GOODBYE)
        outcomes = collect(worker, (1, 2, 3))
        self.assertEqual(outcomes[1].value()[0], "s")
        self.assertEqual(outcomes[2].value()[0], "a")
        self.assertEqual(len(outcomes[3].chunks), 5)
        self.assertEqual(worker.wait(), 0)

    def test_session_requests_are_served_after_goodbye(self) -> None:
        worker = self.start_n(4)
        worker.call(f"{MOD}.read_variable", ["v"], fid=1,
                    header={"session": "s1"})
        worker.send(GOODBYE)
        frame = worker.recv()
        self.assertEqual((frame.type, frame.id), (SESSION_READ, 1))
        reply(worker, 1, {"v": 42})
        self.assertEqual(collect(worker, (1,))[1].value(), 42)
        self.assertEqual(worker.wait(), 0)

    def test_goodbye_when_idle_exits_at_once(self) -> None:
        worker = self.start_n(4)
        self.assertEqual(worker.result(f"{MOD}.async_nap", [0, "a"])[0],
                         "a")
        worker.send(GOODBYE)
        self.assertEqual(worker.wait(), 0)

    def test_call_after_goodbye_is_a_protocol_error(self) -> None:
        worker = self.start_n(4)
        worker.call(f"{MOD}.wait_for_cancel", [TIMEOUT], fid=1)
        worker.send(GOODBYE)
        worker.call(f"{MOD}.nap", [0, "late"], fid=2)
        self.expect_fatal(worker, "protocol_error")


if __name__ == "__main__":
    unittest.main()
