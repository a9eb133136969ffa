"""Progress within a training epoch, for `harness train` and `harness run` (an ImageNet epoch is ~1.3 M
images and many minutes; the epoch's line comes only at its end).

On an interactive terminal a tqdm bar (images done, img/s, time left) that disappears when the epoch
ends; otherwise (the log of a batch job) a plain line every `every` seconds, none for an epoch shorter
than that. Without tqdm (a machine with torch alone, `harness run`) the plain lines are used there too.
`harness sweep` shows none: the Ray Tune table is its progress.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

PLAIN_EVERY_S = 60.0


class EpochProgress:
    """`update(n)` after each step with the images it took; `close()` at the epoch's end."""

    def __init__(self, total: int, title: str, *, stream: TextIO | None = None, every: float | None = None):
        self.total, self.title = int(total), title
        self.every = PLAIN_EVERY_S if every is None else every
        self.stream = stream or sys.stderr
        self.done, self.start = 0, time.monotonic()
        self.last_line = self.start
        self.bar = None
        if self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # torch alone: plain lines
                pass
            else:
                self.bar = tqdm(
                    total=self.total, desc=title, unit="img", unit_scale=True, leave=False, file=self.stream
                )
        if self.bar is None:
            self.stream = sys.stdout if stream is None else stream  # batch logs: with the epoch lines

    def update(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = self.done / self.total if self.total else 1.0
        return (
            f"{self.title}: {self.done:,} of {self.total:,} images ({share:.0%}), {rate:,.0f} img/s, "
            f"about {clock(left)} left in the epoch"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def clock(seconds: float) -> str:
    """'1h 02m 03s', '4m 05s'."""
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
