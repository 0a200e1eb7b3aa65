"""Ready-made event consumers: a tqdm progress bar (the CLI's) and an in-memory event log (tests, notebooks).

A callback is any function taking a `TrainEvent`; the app and the widgets write their own.
"""

from __future__ import annotations

import sys
from typing import IO

from superlora.train.options import TrainEvent


class TqdmProgress:
    """A tqdm bar over the run's steps with loss and learning rate; evaluations print one line each."""

    def __init__(self, file: IO[str] | None = None, desc: str = "train") -> None:
        self.file = file if file is not None else sys.stderr
        self.desc = desc
        self.bar = None

    def _write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.file)

    def __call__(self, event: TrainEvent) -> None:
        from tqdm import tqdm

        if event.kind == "start":
            self._write(event.message)
            self.bar = tqdm(total=event.total_steps, initial=event.step, desc=self.desc, unit="step",
                            file=self.file, dynamic_ncols=True)
        elif event.kind == "step" and self.bar is not None:
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.metrics['loss']:.4f}", lr=f"{event.metrics['lr']:.2e}", refresh=False)
        elif event.kind == "eval":
            self._write(event.message)
        elif event.kind in ("done", "stopped", "error"):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if event.kind != "error":  # the CLI prints errors itself, once
                self._write(event.message)


class EventLog:
    """Keeps every event in `events`; `of(kind)` filters them."""

    def __init__(self) -> None:
        self.events: list[TrainEvent] = []

    def __call__(self, event: TrainEvent) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[TrainEvent]:
        return [e for e in self.events if e.kind == kind]
