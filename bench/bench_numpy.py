"""The module of the start-up benchmark: a worker that imports numpy, as
a typical data tool does."""

import numpy

import snakepit


@snakepit.function
def mean(values: list) -> float:
    return float(numpy.mean(values))
