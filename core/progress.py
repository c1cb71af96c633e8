"""Progress for long loops: a tqdm bar on a terminal, otherwise a line per 10 % (or per 30 s without a total).

tqdm's carriage-return updates pile up into lines of thousands of characters when the output is a log
file or a pipe; this keeps such logs to a few lines per stage while a terminal still gets a live bar.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO

UNTIMED_EVERY_S = 30.0  # without a total: a line at most this often


class Progress:
    """The subset of tqdm the project uses: iterate, update, set_postfix(_str), write, close."""

    def __init__(self, iterable: Optional[Iterable] = None, desc: str = "", total: Optional[int] = None,
                 unit: str = "it", disable: bool = False, stream: Optional[TextIO] = None):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.stream = stream or sys.stderr
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.start = self.last_time = time.time()
        self.last_step = 0
        self.bar = None
        if not disable and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(iterable, desc=desc, total=total, unit=unit, file=self.stream)

    def __iter__(self) -> Iterator:
        if self.bar is not None:
            yield from self.bar
            return
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
            return
        self.n += n
        if self.disable:
            return
        now = time.time()
        if self.total:
            step = min(10, self.n * 10 // max(1, self.total))
            due = step > self.last_step
            self.last_step = max(self.last_step, step)
        else:
            due = now - self.last_time >= UNTIMED_EVERY_S
        if due:
            self.last_time = now
            self._line()

    def _line(self) -> None:
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        pct = f" {100 * self.n // max(1, self.total)}%" if self.total else ""
        rate = self.n / max(1e-9, time.time() - self.start)
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.1f} s/{self.unit}"
        print(f"{self.desc}:{pct} {done}, {speed}{self.postfix}", file=self.stream, flush=True)

    def set_postfix(self, **values) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()))

    def set_postfix_str(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            self.postfix = f", {text}"

    def write(self, message: str, file: Optional[TextIO] = None) -> None:
        if self.bar is not None:
            self.bar.write(message, file=file)
        else:
            print(message, file=file or self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.disable and self.total is None and self.n:  # a last line for open-ended loops
            self._line()
