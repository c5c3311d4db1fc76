"""The function Snakepit's benchmarks call: echo the bytes back."""

import snakepit


@snakepit.function
def echo(data: bytes) -> bytes:
    return data
