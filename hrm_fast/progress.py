"""One status line with rate and ETA, for training, evaluation and ablations."""

from __future__ import annotations

import math
import sys
import time


class Progress:
    """Redrawn in place on a terminal, logged as lines otherwise."""

    def __init__(
        self, total: int | None, start: int, quiet: bool = False, unit: str = "it", deadline=None
    ):
        self.total, self.start, self.quiet, self.unit = total, start, quiet, unit
        self.deadline = deadline  # perf_counter time work stops at (a time budget), or None
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.line_open = False  # a redrawn line waits for its newline

    def update(self, done: int, extra: str = "") -> str:
        dt = time.perf_counter() - self.t0
        rate = (done - self.start) / dt if dt > 0 else 0.0
        left = float("inf") if self.total is None else self.total - done  # None: open-ended
        eta = left / rate if rate > 0 else float("inf")
        if self.deadline is not None:
            eta = max(0.0, min(eta, self.deadline - time.perf_counter()))
        done_text = f"{done}" if self.total is None else f"{done}/{self.total}"
        line = f"{done_text} | {rate:.2f} {self.unit}/s | ETA {fmt_time(eta)}"
        if extra:
            line += " | " + extra
        if not self.quiet:
            if self.tty:
                print("\r" + line.ljust(118), end="", file=sys.stderr, flush=True)
                self.line_open = True
            else:
                print(line, file=sys.stderr, flush=True)
        return line

    def close(self) -> None:
        """End the redrawn line, so what is printed next starts on its own; again: nothing."""
        if self.line_open:
            print(file=sys.stderr, flush=True)
            self.line_open = False


def fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )
