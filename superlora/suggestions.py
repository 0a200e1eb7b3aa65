"""`suggest(model, budget)`: the study's configurations that fit a parameter budget on a model, best measured first.

Every configuration of the Pareto study (docs/benchmarks.md; its results ship as `superlora/study_results.json`,
see `superlora.study`) is counted exactly on the given model with `count_parameters`; those whose adapter count is
at most the budget are ranked by what the study measured. Counts differ from the study's when the model differs
from the study's (`superlora-default`): the budget always applies to the count on the given model, while the
accuracies are the study's, measured on its model and tasks.

Ranking: the score of a configuration is the mean, over the tasks asked for (`task`, default every study task:
digits and inspection, equally weighted), of its mean validation accuracy over seeds; a configuration is ranked
only when the study measured it on each of those tasks. Higher scores first; ties go to fewer adapter parameters
on this model, then to the method's name and budget label (so the order is total and reproducible).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from superlora.base_models import create_meta_model
from superlora.config import SuperLoRAConfig
from superlora.counting import count_parameters
from superlora.errors import ConfigError, SuperLoRAError
from superlora.study import STUDY_TASKS, Measured, StudyPoint, load_study

DEFAULT_LIMIT = 5


@dataclass(frozen=True)
class Suggestion:
    """One configuration that fits the budget: its exact count on the model and what the study measured for it.

    config: the adapter (None: train the head alone, the study's 0-parameter point, when the study has one).
    parameters: the exact adapter count of `config` on the model `suggest` was given (at most the budget).
    study_parameters: its count on the study's model.
    measured: the study's accuracy per task (mean ± sd over seeds at the chosen lr), in the order of the tasks.
    score: the ranking key, the mean of `measured`'s means.
    why: one line on why it is where it is in the list.
    """

    family: str
    method: str
    budget_label: str
    config: SuperLoRAConfig | None
    parameters: int
    study_parameters: int
    measured: tuple[Measured, ...]
    score: float
    why: str

    @property
    def lrs(self) -> str:
        """The adapter lr(s) the study chose for it, "/"-joined per task; "–" for the head alone (no adapter lr)."""
        if self.config is None:
            return "–"
        return "/".join(dict.fromkeys(f"{m.lr:g}" for m in self.measured))

    @property
    def label(self) -> str:
        """e.g. "LoRTA M=4 r=4"."""
        return f"{self.method} {self.budget_label}".strip()

    def accuracy_text(self) -> str:
        """The study's accuracy on each task, e.g. "digits 76.8 ± 2.9 % (3 seeds, lr 0.064); inspection ..."."""
        return "; ".join(f"{m.task} {m.text()}" for m in self.measured)

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "method": self.method, "budget": self.budget_label,
                "config": None if self.config is None else self.config.to_dict(), "parameters": self.parameters,
                "study_parameters": self.study_parameters, "score": self.score, "why": self.why,
                "measured": {m.task: {"mean": m.mean, "sd": m.sd, "seeds": m.seeds, "lr": m.lr}
                             for m in self.measured}}


def sort_key(suggestion: Suggestion) -> tuple[float, int, str, str]:
    """The documented order: higher score, then fewer parameters on the model, then method and budget label."""
    return (-suggestion.score, suggestion.parameters, suggestion.method, suggestion.budget_label)


# ---------------------------------------------------------------------------------------------- checks
def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        if isinstance(budget, float) and budget.is_integer():
            budget = int(budget)
        else:
            raise ConfigError(f"budget={budget!r}: must be a whole number of adapter parameters, e.g. budget=1000")
    if budget < 0:
        raise ConfigError(f"budget={budget}: must be 0 or more adapter parameters, e.g. budget=1000")
    return budget


def _check_tasks(task: str | None, points: Sequence[StudyPoint]) -> tuple[str, ...]:
    measured = sorted({t for p in points for t in p.measured}, key=lambda t: (t not in STUDY_TASKS, t))
    if task is None:
        return tuple(measured)
    if task not in measured:
        raise ConfigError(f"task={task!r}: the study measured {', '.join(measured)}; choose one, or none for all")
    return (task,)


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit={limit!r}: must be a positive whole number, or None for every configuration")
    return limit


def _as_model(model: nn.Module | str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        return create_meta_model(model)
    raise ConfigError(f"model: expected a torch module or a model name, got {type(model).__name__}")


# ---------------------------------------------------------------------------------------------- suggest
def _counted(points: Sequence[StudyPoint], model: nn.Module, targets: Sequence[str] | None
             ) -> tuple[list[tuple[StudyPoint, SuperLoRAConfig | None, int]], list[str]]:
    """(point, config on these targets, exact count on the model) for every point that applies, and the problems
    of those that do not (e.g. more groups than the model has targets)."""
    counted, problems = [], []
    for point in points:
        if point.config is None:  # the head alone: no adapter on any model
            counted.append((point, None, 0))
            continue
        config = point.config if targets is None else point.config.replace(targets=tuple(targets))
        try:
            counted.append((point, config, int(count_parameters(model, config, trainable=()))))
        except SuperLoRAError as err:
            problems.append(f"{point.method} {point.budget}: {err}")
    return counted, problems


def suggest(model: nn.Module | str, budget: int, task: str | None = None, targets: Sequence[str] | None = None,
            limit: int | None = DEFAULT_LIMIT, study: Sequence[StudyPoint] | None = None) -> list[Suggestion]:
    """The study's configurations whose exact adapter count on `model` is at most `budget`, best measured first.

    model: a torch module (any device, `meta` included) or a model name (`superlora models`).
    task: rank by one study task ("digits" or "inspection"); None ranks by the mean over all of them.
    targets: adapt these targets instead of the study's (q and v); counts change, the accuracies stay the study's.
    limit: at most this many suggestions (None: all that fit).
    study: the study's points (default: the shipped results, `superlora.study.load_study()`).

    The study's head-only baseline (the head alone, 0 adapter parameters) fits every budget and is ranked like the
    rest; below the smallest adapter it is the only suggestion, and its `why` names the smallest adapter.

    Raises ConfigError for a bad budget, task or limit, when no adapter configuration of the study applies to the
    model, and when nothing fits the budget (naming the smallest count that does fit on this model)."""
    budget, limit = _check_budget(budget), _check_limit(limit)
    points = list(load_study() if study is None else study)
    tasks = _check_tasks(task, points)
    points = [p for p in points if all(t in p.measured for t in tasks)]
    counted, problems = _counted(points, _as_model(model), targets)
    adapters = [item for item in counted if item[1] is not None]
    if not adapters:
        detail = f" ({problems[0]})" if problems else ""
        raise ConfigError(f"targets={targets!r}: no configuration of the study applies to this model{detail}; "
                          "name targets the model has, e.g. targets=['qkv'] or a Linear layer's name")
    fitting = [(p, c, n) for p, c, n in counted if n <= budget]
    if not any(c is not None for _, c, _ in fitting):
        point, _, smallest = min(adapters, key=lambda item: (item[2], item[0].method))
        too_small = (f"no adapter configuration of the study fits; the smallest on this model is {point.method} "
                     f"{point.budget} with {smallest:,} adapter parameters; raise the budget to at least {smallest:,}")
        if not fitting:
            raise ConfigError(f"budget={budget:,}: {too_small}")
        head = _suggestion(*fitting[0], tasks)
        return [dataclasses.replace(head, why=f"the study's 0-parameter baseline (the head alone) is the only choice "
                                              f"within {budget:,}: {too_small}")]
    ranked = sorted((_suggestion(p, c, n, tasks) for p, c, n in fitting), key=sort_key)
    best = ranked[0]
    ranked = [_with_why(s, rank, len(ranked), budget, best, tasks) for rank, s in enumerate(ranked, start=1)]
    return ranked if limit is None else ranked[:limit]


def _suggestion(point: StudyPoint, config: SuperLoRAConfig | None, parameters: int, tasks: Sequence[str]
                ) -> Suggestion:
    measured = tuple(point.measured[t] for t in tasks)
    return Suggestion(point.family, point.method, point.budget, config, parameters, point.study_parameters,
                      measured, statistics.fmean(m.mean for m in measured), why="")


def _with_why(suggestion: Suggestion, rank: int, fitting: int, budget: int, best: Suggestion,
              tasks: Sequence[str]) -> Suggestion:
    where = f"mean of {' and '.join(tasks)}" if len(tasks) > 1 else tasks[0]
    if rank == 1:
        why = (f"best measured accuracy ({where}) of the {fitting} study configuration(s) within {budget:,} "
               "parameters on this model")
    else:
        why = f"#{rank} of {fitting}: {100 * (best.score - suggestion.score):.1f} points below #1 ({where})"
    if suggestion.parameters != suggestion.study_parameters:
        why += f"; {suggestion.study_parameters:,} parameters on the study's model"
    return dataclasses.replace(suggestion, why=why)
