"""The runtime's optional C half, `_snakepit_native` (python/native).

The host puts it on the workers' path when it was built for their
interpreter. Set SNAKEPIT_NATIVE=0 (or false, no, off) to run without
it: everything it does has a Python twin that gives the same results,
only slower.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["native"]

# Spellings of "off" for SNAKEPIT_NATIVE; any other value means on.
_OFF = frozenset(("0", "false", "no", "off"))

native: Any = None
if os.environ.get("SNAKEPIT_NATIVE", "1").strip().lower() not in _OFF:
    try:
        import _snakepit_native as native
    except ImportError:
        pass
