"""How every command line of the engine ends: user errors as one line, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from .errors import F2DError


def run_command(fn: Callable, args, interrupted: str = "interrupted") -> int:
    """fn(args); an F2DError prints `error: ...` and gives exit code 2, Ctrl-C gives 130."""
    try:
        return fn(args)
    except F2DError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
