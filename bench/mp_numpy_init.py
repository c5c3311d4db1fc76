"""The worker initializer of mp_bench.py's start-up benchmark: importing
this module imports numpy, as a typical data tool's module does."""

import os

import numpy  # noqa: F401  (the import is what is measured)


def ready(queue) -> None:
    """Tells the benchmark that this worker has imported numpy."""
    queue.put(os.getpid())
