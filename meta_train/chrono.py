"""Wall-clock time of a training loop's steps, in the spirit of big_vision's ``chrono``.

A ``Chrono`` is started once the step is compiled, so compile time never counts as step time.
``tick()`` after each dispatched step; ``lap()`` at a log step (after reading the step's metrics,
which waits for it) gives the steps and the seconds of steady stepping since the last lap. Time
spent inside ``paused(in_flight)`` (evaluations, checkpoints, exports) is taken out; waiting there
for the step still in flight is step time. clu's periodic actions would do the same but need
TensorFlow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax


class Lap(NamedTuple):
    """``steps`` ticked in ``seconds`` of stepping (pauses taken out)."""

    steps: int
    seconds: float


class Chrono:
    """Steady step time per lap, with pauses taken out."""

    def __init__(self):
        self._start_lap()

    def _start_lap(self) -> None:
        self._start, self._steps, self._paused = time.perf_counter(), 0, 0.0

    def tick(self) -> None:
        """One more step dispatched."""
        self._steps += 1

    def lap(self) -> Lap:
        """The lap since the last one (or the start); starts the next."""
        seconds = time.perf_counter() - self._start - self._paused
        lap = Lap(self._steps, seconds)
        self._start_lap()
        return lap

    @contextlib.contextmanager
    def paused(self, in_flight: Any = None) -> Iterator[None]:
        """Within the block the clock stops; it first waits for ``in_flight`` (arrays the step
        still computes: dispatch is asynchronous), so that wait counts as step time."""
        jax.block_until_ready(in_flight)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - start
