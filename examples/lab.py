"""Real work for the Snakepit examples, on libraries Debian packages.

Run with Debian's interpreter, which has numpy and scikit-learn:

    build/snakepit call lab.train_digits --module examples/lab.py \
        --python /usr/bin/python3
"""

from __future__ import annotations

import collections
import io
import re
from typing import Iterator

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import snakepit

# A text file every Debian system ships.
DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"

_model: LogisticRegression | None = None


@snakepit.on_start
def _warm_up() -> None:
    """Loads the digits once per worker, so the first call is not slow."""
    load_digits()


def _split(test_fraction: float, seed: int):
    digits = load_digits()
    return train_test_split(digits.data, digits.target,
                            test_size=test_fraction, random_state=seed,
                            stratify=digits.target)


def _fit(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    model = LogisticRegression(max_iter=2000)
    model.fit(x / 16.0, y)
    return model


@snakepit.function
def train_digits(test_fraction: float = 0.25, seed: int = 0) -> dict:
    """Trains a classifier on scikit-learn's 8x8 digits; returns accuracy."""
    global _model
    x_train, x_test, y_train, y_test = _split(test_fraction, seed)
    _model = _fit(x_train, y_train)
    accuracy = float(_model.score(x_test / 16.0, y_test))
    return {"accuracy": round(accuracy, 4), "train_images": len(y_train),
            "test_images": len(y_test), "classes": 10}


@snakepit.function
def predict_digits(indices: list, ctx: snakepit.Context) -> list:
    """Predicts the digits at `indices` of the dataset with the model this
    worker trained (training one first if it has none)."""
    global _model
    if _model is None:
        ctx.logger.info("no model yet in this worker; training one")
        train_digits()
    digits = load_digits()
    picked = digits.data[np.asarray(indices, dtype=int)]
    predicted = _model.predict(picked / 16.0)
    return [{"index": int(i), "predicted": int(p),
             "actual": int(digits.target[i])}
            for i, p in zip(indices, predicted)]


@snakepit.function
def stats(values: list) -> dict:
    """Summary statistics of a list of numbers, computed with numpy."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("stats needs at least one value")
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return {"count": int(data.size), "mean": float(data.mean()),
            "std": float(data.std()), "min": float(data.min()),
            "q1": float(q1), "median": float(median), "q3": float(q3),
            "max": float(data.max())}


def _words(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return re.findall(r"[a-z']+", f.read().lower())


@snakepit.function
def word_count(path: str = DEFAULT_TEXT, top: int = 10) -> dict:
    """The `top` most frequent words of a text file."""
    words = _words(path)
    common = collections.Counter(words).most_common(top)
    return {"path": path, "words": len(words), "distinct": len(set(words)),
            "top": [{"word": w, "count": c} for w, c in common]}


@snakepit.function
def learning_curve(steps: int = 5,
                   ctx: snakepit.Context = None) -> Iterator[dict]:
    """Streams test accuracy as the training set grows, one chunk a step."""
    x_train, x_test, y_train, y_test = _split(0.25, 0)
    for step in range(1, steps + 1):
        if ctx is not None and ctx.cancelled:
            return
        n = max(20, len(y_train) * step // steps)
        model = _fit(x_train[:n], y_train[:n])
        yield {"step": step, "train_images": n,
               "accuracy": round(float(model.score(x_test / 16.0, y_test)),
                                 4)}


# A session flow: fit once, predict in later calls. The fitted model
# stays in this worker's ctx.session.local; its parameters are stored in
# the session as a program, so a worker new to the session (after a
# crash, or under load) rebuilds the model without training again.

def _model_from_program(blob: bytes) -> LogisticRegression:
    arrays = np.load(io.BytesIO(blob))
    model = LogisticRegression()
    model.coef_ = arrays["coef"]
    model.intercept_ = arrays["intercept"]
    model.classes_ = arrays["classes"]
    return model


@snakepit.function
def session_fit(ctx: snakepit.Context, c: float = 1.0) -> dict:
    """Trains a digit classifier for this session and keeps it."""
    x_train, x_test, y_train, y_test = _split(0.25, 0)
    model = LogisticRegression(max_iter=2000, C=c).fit(x_train / 16.0,
                                                       y_train)
    blob = io.BytesIO()
    np.savez(blob, coef=model.coef_, intercept=model.intercept_,
             classes=model.classes_)
    ctx.session.store_program("digits-model", blob.getvalue())
    ctx.session.local["model"] = model
    ctx.session.set("accuracy", round(float(model.score(x_test / 16.0,
                                                         y_test)), 4))
    return {"accuracy": ctx.session.get("accuracy"),
            "worker": ctx.worker_pid}


@snakepit.function
def session_predict(indices: list, ctx: snakepit.Context) -> dict:
    """Predicts with the session's model: the worker's cached object, or
    one rebuilt from the stored parameters."""
    model = ctx.session.local.get("model")
    source = "local"
    if model is None:
        model = _model_from_program(ctx.session.get_program("digits-model"))
        ctx.session.local["model"] = model
        source = "program"
    digits = load_digits()
    picked = digits.data[np.asarray(indices, dtype=int)] / 16.0
    ctx.session.update("predictions", lambda n: n + len(indices), 0)
    return {"predicted": [int(p) for p in model.predict(picked)],
            "actual": [int(digits.target[i]) for i in indices],
            "model_from": source, "worker": ctx.worker_pid}
