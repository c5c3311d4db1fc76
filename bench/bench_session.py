"""The functions the session benchmarks call: a 100-byte echo that takes
a snakepit.Context, so that the same function runs with and without a
session, and a read of one session variable."""

from typing import Any

import snakepit


@snakepit.function
def echo(data: bytes, ctx: snakepit.Context) -> bytes:
    return data


@snakepit.function
def get(name: str, ctx: snakepit.Context) -> Any:
    """The session variable `name`: one SESSION_READ to the host's store,
    as the first read of a session in any call."""
    return ctx.session.get(name)
