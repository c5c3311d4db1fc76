"""The function the session benchmarks call: a 100-byte echo that takes
a snakepit.Context, so that the same function runs with and without a
session."""

import snakepit


@snakepit.function
def echo(data: bytes, ctx: snakepit.Context) -> bytes:
    return data
