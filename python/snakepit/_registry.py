"""The registry of callable functions and start hooks of this process.

`@snakepit.function` inspects a function once, when it is decorated, and
records everything a call needs (its kind, where its Context goes) and the
catalogue entry the worker sends in READY (docs/protocol.md, "Function
catalogue"). Nothing is inspected per call.
"""

from __future__ import annotations

import builtins
import inspect
from typing import (Any, Callable, Dict, List, Optional, TypeVar, Union,
                    overload)

from ._codec import safe_text
from ._context import Context

__all__ = ["FunctionEntry", "catalogue", "entries", "function", "hooks",
           "on_start"]

_F = TypeVar("_F", bound=Callable[..., Any])

_CONTEXT_NAMES = ("Context", "snakepit.Context")

_PARAM_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional_only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}


class FunctionEntry:
    """One registered function; fixed once registered.

    Attributes:
        name: the call name.
        fn: the function itself.
        kind: `function`, `async`, `generator` or `async_generator`.
        context_name: the name of the Context parameter, or None.
        context_index: where the Context goes among positional arguments
            (when at least that many are given), or None if keyword-only.
        catalogue: the READY catalogue entry.
    """

    __slots__ = ("name", "fn", "kind", "context_name", "context_index",
                 "catalogue")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self.kind = _kind_of(fn)
        signature = inspect.signature(fn)
        self.context_name: Optional[str] = None
        self.context_index: Optional[int] = None
        params = []
        for index, param in enumerate(signature.parameters.values()):
            if _is_context(param.annotation, fn):
                self._set_context(param, index)
            else:
                params.append(_param_entry(param))
        self.catalogue: Dict[str, Any] = {
            "name": name,
            "kind": self.kind,
            "doc": safe_text(inspect.getdoc(fn) or ""),
            "params": params,
            "returns": _annotation_text(signature.return_annotation),
        }

    def _set_context(self, param: inspect.Parameter, index: int) -> None:
        where = f"{self.name}: parameter {param.name!r}"
        if self.context_name is not None:
            raise TypeError(f"{where}: only one parameter may take the "
                            f"Context")
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{where}: *args or **kwargs cannot take the "
                            f"Context")
        if param.kind == param.POSITIONAL_ONLY and index != 0:
            raise TypeError(f"{where}: a positional-only Context parameter "
                            f"must come first")
        self.context_name = param.name
        if param.kind != param.KEYWORD_ONLY:
            self.context_index = index


_functions: Dict[str, FunctionEntry] = {}
_hooks: List[Callable[[], Any]] = []
_session_end_hooks: List[Callable[[str, Dict[Any, Any]], Any]] = []


@overload
def function(fn: _F) -> _F:
    ...


@overload
def function(*, name: Optional[str] = None) -> Callable[[_F], _F]:
    ...


def function(fn: Optional[_F] = None, *,
             name: Optional[str] = None) -> Union[_F, Callable[[_F], _F]]:
    """Makes a module-level function callable from the host.

    Use bare, `@snakepit.function`, or with a call name,
    `@snakepit.function(name="predict")`; the name defaults to
    `module.function`. Returns the function unchanged. Raises TypeError
    for anything but a module-level `def` (lambdas, nested functions,
    methods, builtins) and ValueError if another function has the name.
    """
    if fn is None:
        def decorate(inner: _F) -> _F:
            return _register(inner, name)
        return decorate
    if isinstance(fn, str):
        raise TypeError("give the call name as a keyword: "
                        "@snakepit.function(name=...)")
    return _register(fn, name)


def on_start(hook: _F) -> _F:
    """Registers `hook()` to run once per worker, after its imports.

    Hooks run in registration order, before the worker reports ready; a
    hook that raises stops the worker (reason `start_hook_failed`). A hook
    may be an `async def`. Returns the hook unchanged.
    """
    if not callable(hook):
        raise TypeError(f"on_start needs a callable, got "
                        f"{type(hook).__name__}")
    _hooks.append(hook)
    return hook


def on_session_end(hook: _F) -> _F:
    """Registers `hook(session_id, local)` to run in each worker that
    holds local objects of a session when the session is deleted or
    expires; `local` is the dict the worker is about to drop. Runs
    between calls (with --max-concurrency above 1: once the session's
    calls in flight have ended, on the thread that ends the last one); an
    exception is printed, never fatal. Returns the hook unchanged."""
    if not callable(hook):
        raise TypeError(f"on_session_end needs a callable, got "
                        f"{type(hook).__name__}")
    _session_end_hooks.append(hook)
    return hook


def session_end_hooks() -> List[Callable[[str, Dict[Any, Any]], Any]]:
    """Returns the session end hooks in registration order (a copy)."""
    return list(_session_end_hooks)


def catalogue() -> List[Dict[str, Any]]:
    """Returns the catalogue entries of every registered function.

    Entries are in registration order, shaped as READY sends them; the
    list is a copy.
    """
    return [_copy_entry(entry.catalogue) for entry in _functions.values()]


def entries() -> Dict[str, FunctionEntry]:
    """Returns the registered functions by call name (a copy)."""
    return dict(_functions)


def hooks() -> List[Callable[[], Any]]:
    """Returns the start hooks in registration order (a copy)."""
    return list(_hooks)


def _register(fn: _F, name: Optional[str]) -> _F:
    _check_module_level(fn)
    if name is None:
        name = f"{fn.__module__}.{fn.__name__}"
    elif not isinstance(name, str) or not name:
        raise TypeError("a function's call name must be a non-empty str")
    old = _functions.get(name)
    if old is not None and not _same_definition(old.fn, fn):
        raise ValueError(f"call name {name!r} is already taken by "
                         f"{old.fn.__module__}.{old.fn.__qualname__}")
    _functions[name] = FunctionEntry(name, fn)
    return fn


def _check_module_level(fn: Any) -> None:
    if not inspect.isfunction(fn):
        raise TypeError(f"snakepit.function needs a function defined with "
                        f"def, got {type(fn).__name__}")
    qualname = fn.__qualname__
    if fn.__name__ == "<lambda>":
        raise TypeError("snakepit.function cannot take a lambda; define a "
                        "module-level function")
    if qualname != fn.__name__:
        raise TypeError(f"snakepit.function needs a module-level function; "
                        f"{qualname!r} is nested in a function or class")


def _same_definition(old: Callable[..., Any],
                     new: Callable[..., Any]) -> bool:
    """Tells whether `new` re-defines `old`, as when a module reloads."""
    return (old.__module__ == new.__module__
            and old.__qualname__ == new.__qualname__)


def _kind_of(fn: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(fn):
        return "async_generator"
    if inspect.iscoroutinefunction(fn):
        return "async"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    return "function"


def _is_context(annotation: Any, fn: Callable[..., Any]) -> bool:
    """Tells whether an annotation names snakepit.Context.

    A string annotation (`from __future__ import annotations`) is looked
    up as a dotted name in the function's globals, with no eval; if that
    fails, "Context" and "snakepit.Context" still count.
    """
    if annotation is Context:
        return True
    if not isinstance(annotation, str):
        return False
    return (_resolve_dotted(annotation, fn) is Context
            or annotation in _CONTEXT_NAMES)


def _resolve_dotted(text: str, fn: Callable[..., Any]) -> Any:
    parts = text.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    namespace = getattr(fn, "__globals__", {})
    value = namespace.get(parts[0], getattr(builtins, parts[0], None))
    for part in parts[1:]:
        value = getattr(value, part, None)
    return value


def _param_entry(param: inspect.Parameter) -> Dict[str, Any]:
    entry = {
        "name": param.name,
        "kind": _PARAM_KINDS[param.kind],
        "annotation": _annotation_text(param.annotation),
    }
    if param.default is not param.empty:
        entry["default"] = _safe_repr(param.default)
    return entry


def _annotation_text(annotation: Any) -> str:
    """Renders an annotation: `int`, `list[str]`, `numpy.ndarray`, ..."""
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return safe_text(annotation)
    if annotation is None:
        return "None"
    # A class, but not `list[int]`, which passes isinstance(x, type) on 3.9.
    if issubclass(type(annotation), type):
        module = getattr(annotation, "__module__", "builtins")
        qualname = getattr(annotation, "__qualname__", annotation.__name__)
        return qualname if module == "builtins" else f"{module}.{qualname}"
    return _safe_repr(annotation)


def _safe_repr(value: Any) -> str:
    try:
        return safe_text(repr(value))
    except Exception:
        return f"<{type(value).__name__} with a failing repr>"


def _copy_entry(entry: Dict[str, Any]) -> Dict[str, Any]:
    copied = dict(entry)
    copied["params"] = [dict(param) for param in entry["params"]]
    return copied
