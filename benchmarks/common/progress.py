"""A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, total: float, label: str, unit: str = "", stream: TextIO | None = None
    ) -> None:
        self.total = max(float(total), 1e-9)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0.0
        self.note = ""
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._decile = -1

    def update(self, done: float, note: str = "") -> None:
        self.done = done
        self.note = note or self.note
        share = min(done / self.total, 1.0)
        if self.tty:
            now = time.monotonic()
            if now - self._drawn_at >= 0.2 or share >= 1.0:
                self._drawn_at = now
                bar = "#" * int(share * 30)
                self.stream.write(
                    f"\r{self.label} [{bar:<30}] {share * 100:5.1f}% {self.note}"[:150]
                )
                self.stream.flush()
        elif int(share * 10) > self._decile:
            self._decile = int(share * 10)
            self.stream.write(f"{self.label}: {share * 100:.0f}% {self.note}\n")
            self.stream.flush()

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            self.stream.write("\n")
        self.stream.write(f"{self.label}: done in {elapsed:.1f}s {self.note}\n")
        self.stream.flush()
