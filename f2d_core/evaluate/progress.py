"""A progress bar: tqdm when it is installed (it is not a dependency of the pack), else one
status line on stderr (rewritten in place on a terminal, every 10% otherwise)."""
from __future__ import annotations

import sys
import time


class _Line:
    def __init__(self, total: int, desc: str, stream=None):
        self.total, self.desc, self.n, self.note = total, desc, 0, ""
        self.stream = stream or sys.stderr
        self.tty, self.t0, self._shown = self.stream.isatty(), time.monotonic(), -1

    def update(self, n: int = 1) -> None:
        self.n += n
        self._show()

    def set_postfix_str(self, text: str) -> None:
        self.note = text

    def write(self, text: str, file=None) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        tenth = 10 * self.n // max(self.total, 1)
        if not (self.tty or force or tenth != self._shown or self.n == self.total):
            return
        self._shown = tenth
        took = time.monotonic() - self.t0
        eta = took / self.n * (self.total - self.n) if self.n else 0.0
        line = f"{self.desc}: {self.n}/{self.total} [{took:.0f}s<{eta:.0f}s] {self.note}".rstrip()
        self.stream.write(f"\r\033[K{line}" if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def progress_bar(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return _Line(total, desc)
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)
