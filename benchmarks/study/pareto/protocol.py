"""How the ViT study picks learning rates and run lengths: the original protocol (one adapter lr per family, chosen
at the family's sweep point; 100 steps for everyone) and the fair re-run's protocol (issue 12: every point sweeps
its own lr, points under 1,000 adapter parameters train 4x longer, head-only sweeps its head lr, and every point
also runs its seeds at the shipped default lr, so that the study measures how far one default lr falls short)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.study.sweep import HEAD_ONLY_FAMILY, LR_FACTOR, LR_GRID, MAX_EXTENSIONS
from superlora.defaults import DEFAULT_HEAD_LR, DEFAULT_LR


@dataclass(frozen=True)
class Protocol:
    """The lr rule and run lengths of one version of the study.

    per_point: each point sweeps its own lr on seed 0 over `grid` (else one sweep point per family decides for the
    family); an lr past an edge of the grid is tried `factor` times further out, at most `max_extensions` times.
    Points with fewer than `long_below` adapter parameters train `long_steps` steps (None: every point trains the
    setup's steps). `default_lr`: the main seeds also run at this lr where the sweep chose another (None: not).
    `head_grid`: the head lrs that head-only sweeps (None: head-only trains at the setup's head lr)."""

    name: str
    grid: tuple[float, ...]
    factor: float
    max_extensions: int
    per_point: bool
    long_steps: int | None = None
    long_below: int = 0
    default_lr: float | None = None
    default_head_lr: float | None = None
    head_grid: tuple[float, ...] | None = None

    def steps_for(self, adapter_params: int, steps: int) -> int:
        """The run length of a point with `adapter_params` adapter parameters when the setup says `steps`."""
        if self.long_steps is not None and adapter_params < self.long_below:
            return self.long_steps
        return steps

    def sweeps_head(self, family: str) -> bool:
        """Whether a point's sweep varies the head lr (head-only under a protocol with a head grid)."""
        return family == HEAD_ONLY_FAMILY and self.head_grid is not None

    def sweep_grid(self, family: str) -> tuple[float, ...]:
        return self.head_grid if self.sweeps_head(family) else self.grid

    def default_for(self, family: str) -> float | None:
        """The lr the point's seeds also run at (the shipped default of what its sweep varies)."""
        return self.default_head_lr if self.sweeps_head(family) else self.default_lr


FAMILY = Protocol("family", LR_GRID, LR_FACTOR, MAX_EXTENSIONS, per_point=False)

# Factor-2 steps around the shipped default (3e-2 is on the grid, so the sweep's seed-0 run at it is also the
# default's seed 0); head-only's grid sits around the shipped head lr (1e-2) the same way.
PER_POINT = Protocol(
    "per-point", grid=tuple(DEFAULT_LR * 2.0 ** k for k in (-3, -2, -1, 0, 1)), factor=2.0, max_extensions=2,
    per_point=True, long_steps=400, long_below=1000, default_lr=DEFAULT_LR, default_head_lr=DEFAULT_HEAD_LR,
    head_grid=tuple(DEFAULT_HEAD_LR * 2.0 ** k for k in (-2, -1, 0, 1, 2)))
PROTOCOLS = {p.name: p for p in (FAMILY, PER_POINT)}
