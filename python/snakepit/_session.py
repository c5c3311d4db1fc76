"""ctx.session: the session a call runs in.

The record lives in the host's session store; every read and write goes
to the host over the channel (SESSION_READ, SESSION_WRITE, answered by
SESSION_REPLY; docs/protocol.md). Writes are compare-and-swap on the
record's version. `local` is this worker's own cache for objects that
cannot be stored (a fitted model); the host keeps calls of a session on
the worker that served it last, so the cache is usually warm, but it is
empty on a worker new to the session, and cleared (after the
`on_session_end` hooks run) when the session is deleted or expires.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

# Rounds of read, compute, compare-and-swap that update() makes, and the
# bounds of the random pause between them (seconds).
UPDATE_ATTEMPTS = 10
_FIRST_BACKOFF = 0.0005
_MAX_BACKOFF = 0.05

_MISSING = object()

# (header, body) -> (reply header, reply body); raises SessionError.
Requester = Callable[[int, Dict[str, Any], bytes], Tuple[Dict[str, Any],
                                                          Any]]


class SessionError(Exception):
    """A session operation failed; `reason` is the host's stable reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SessionConflict(SessionError):
    """Another writer changed the session first; re-read and redo."""


class Session:
    """The session of the running call. See the module docstring."""

    __slots__ = ("id", "local", "_request", "_codec", "_version",
                 "_variables")

    def __init__(self, session_id: str, local: Dict[Any, Any],
                 request: Requester, codec: Any) -> None:
        self.id = session_id
        self.local = local
        self._request = request
        self._codec = codec
        self._version = 0
        self._variables: Optional[Dict[str, Any]] = None

    @property
    def version(self) -> int:
        """The record's version as this call last saw it."""
        self._ensure()
        return self._version

    def refresh(self) -> None:
        """Reads the record from the store again."""
        header, body = self._request(40, {"op": "get",
                                          "session": self.id}, b"")
        self._version = int(header.get("version", 0))
        self._variables = self._codec.decode(body) if body else {}

    def get(self, name: str, default: Any = None) -> Any:
        """The variable `name` as of the last read, or `default`."""
        self._ensure()
        assert self._variables is not None
        return self._variables.get(name, default)

    def names(self) -> List[str]:
        self._ensure()
        assert self._variables is not None
        return sorted(self._variables)

    def set(self, name: str, value: Any) -> None:
        """Stores `value` as `name` if the record is unchanged since this
        call read it; SessionConflict otherwise (see update())."""
        self._write({name: value}, [])

    def delete(self, name: str) -> None:
        """Removes the variable `name` (compare-and-swap, like set())."""
        self._write({}, [name])

    def update(self, name: str, fn: Callable[[Any], Any],
               default: Any = None) -> Any:
        """Read-modify-write with retry: stores fn(current value) and
        returns it, re-reading and redoing on conflict."""
        for attempt in range(UPDATE_ATTEMPTS):
            if attempt:
                # Writers that collide tend to collide again in lockstep;
                # a random, growing pause breaks the tie.
                time.sleep(random.uniform(
                    0, min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** attempt)))
                self.refresh()
            else:
                self._ensure()
            assert self._variables is not None
            value = fn(self._variables.get(name, default))
            try:
                self._write({name: value}, [])
                return value
            except SessionConflict:
                continue
        raise SessionConflict("session_conflict",
                              f"session {self.id} kept changing over "
                              f"{UPDATE_ATTEMPTS} attempts")

    def store_program(self, program_id: str, data: bytes) -> None:
        """Stores `data` as the session's program `program_id`."""
        header, _ = self._request(41, {"op": "store_program",
                                       "session": self.id,
                                       "program": program_id},
                                  self._codec.encode(bytes(data)))
        self._version = int(header.get("version", self._version))
        self._variables = None  # the record moved on

    def get_program(self, program_id: str) -> bytes:
        """The program `program_id`; SessionError program_not_found."""
        _, body = self._request(40, {"op": "get_program",
                                     "session": self.id,
                                     "program": program_id}, b"")
        return bytes(self._codec.decode(body))

    def _ensure(self) -> None:
        if self._variables is None:
            self.refresh()

    def _write(self, values: Dict[str, Any], deleted: List[str]) -> None:
        self._ensure()
        body = self._codec.encode(values) if values else b""
        header, _ = self._request(41, {"op": "cas", "session": self.id,
                                       "expected_version": self._version,
                                       "delete": deleted}, body)
        self._version = int(header["version"])
        assert self._variables is not None
        self._variables.update(values)
        for name in deleted:
            self._variables.pop(name, None)

    def __repr__(self) -> str:
        return f"<snakepit.Session {self.id} v{self._version}>"
