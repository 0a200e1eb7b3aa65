"""Choosing by budget: the shipped study results, `superlora.suggest`, and the studio's budget box.

The shipped `superlora/study_results.json` must be what the committed CSVs give, and what docs/benchmarks.md
reports; every suggestion's exact count on the model is at most the budget (a property test over budgets and
models), the list is in the documented order and leaves out nothing that fits; picking one in the studio sets the
controls to a config with exactly that count.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import superlora
from superlora import ConfigError, count_parameters, suggest
from superlora.base_models import create_meta_model
from superlora.study import STUDY_FILE, Measured, StudyPoint, choose_lr, load_study, study_results_from_csv
from superlora.suggestions import sort_key

from toy_models import TwoLayerMLP, tiny_vit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def default_model():
    return create_meta_model("superlora-default")


@pytest.fixture(scope="module")
def study():
    return load_study()


# ------------------------------------------------------------------------------------------------ the shipped file
def test_the_shipped_results_are_what_the_committed_csvs_give():
    """Regenerate with `python -m superlora.study` when the study's CSVs change."""
    assert json.loads(STUDY_FILE.read_text(encoding="utf-8")) == study_results_from_csv(RESULTS)


def test_the_package_ships_the_results_file():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\s*\nsuperlora = \["study_results\.json"\]', pyproject)


def _docs_points(task: str) -> dict[tuple[str, str], tuple[int, float, float, float, int]]:
    """docs/benchmarks.md's "Every point" table of one task: (method, budget) -> (params, lr, mean, sd, n)."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text.split(f"\n### {task}\n", 1)[1].split("</details>", 1)[0]
    rows = re.findall(r"^\| [\w-]+ \| (.+?) \| (r=\d+|0 params) \| ([\d,]+) \| ([\d.]+|– \(head only\)) \| "
                      r"([\d.]+) ± ([\d.]+) \(n=(\d+)\) \|", section, re.M)
    # head-only has no adapter lr: the page says so, the shipped file keeps the unused lr its runs recorded
    return {(m, b): (int(p.replace(",", "")), None if lr.startswith("–") else float(lr), float(mean), float(sd), int(n))
            for m, b, p, lr, mean, sd, n in rows}


@pytest.mark.parametrize("task", ["digits", "inspection"])
def test_every_point_agrees_with_the_tables_of_docs_benchmarks_md(task):
    """The generator and benchmarks/pareto.py's analysis compute the same lr, mean, sd and seeds per point."""
    documented = _docs_points(task)
    shipped = json.loads(STUDY_FILE.read_text(encoding="utf-8"))["tasks"][task]["points"]
    assert len(documented) == len(shipped) == 35  # 34 adapter points and head-only
    for p in shipped:
        params, lr, mean, sd, n = documented[(p["method"], p["budget"])]
        assert (p["adapter_params"], p["n"]) == (params, n)
        assert p["lr"] == lr if p["family"] != "head-only" else lr is None and params == 0
        assert round(100 * p["mean"], 1) == mean and round(100 * p["sd"], 1) == sd


def test_the_lr_rule_extends_past_an_edge_then_picks_the_best():
    grid = {"0.001": (0.60, 1.0), "0.004": (0.70, 0.9), "0.016": (0.80, 0.8)}
    assert choose_lr(grid) is None  # best at the top edge: 0.064 must run first
    assert choose_lr({**grid, "0.064": (0.75, 0.7)}) == 0.016
    assert choose_lr({**grid, "0.064": (0.90, 0.7)}) is None  # still at the edge: 0.256 next
    assert choose_lr({**grid, "0.064": (0.90, 0.7), "0.256": (0.95, 0.6)}) == 0.256  # two extensions at most
    tie = {"0.001": (0.5, 1.0), "0.004": (0.8, 0.5), "0.016": (0.8, 0.4), "0.064": (0.1, float("nan"))}
    assert choose_lr(tie) == 0.016  # equal accuracy: the lower loss wins
    low = {"0.001": (0.9, 1.0), "0.004": (0.7, 0.9), "0.016": (float("nan"), float("nan")), "0.00025": (0.8, 1.0)}
    assert choose_lr(low) == 0.001


# ------------------------------------------------------------------------------------------------ suggest
MODELS = {
    "superlora-default": (lambda: create_meta_model("superlora-default"), None),
    "tiny timm ViT": (lambda: tiny_vit(), None),
    "vit_small (meta)": (lambda: create_meta_model("vit_small_patch16_224"), None),
    "MLP fc1+fc2": (lambda: TwoLayerMLP(), ("fc1", "fc2")),
}
BUILT = {name: (make(), targets) for name, (make, targets) in MODELS.items()}


def _applicable(study, model, targets):
    """(point, exact count) of every study point that can be applied to the model, counted independently."""
    found = []
    for point in study:
        if point.config is None:  # the head-only baseline: 0 adapter parameters on any model
            found.append((point, 0))
            continue
        config = point.config if targets is None else point.config.replace(targets=targets)
        try:
            found.append((point, int(count_parameters(model, config))))
        except superlora.SuperLoRAError:
            pass
    return found


STUDY = load_study()
APPLICABLE = {name: _applicable(STUDY, model, targets) for name, (model, targets) in BUILT.items()}


@settings(max_examples=50, deadline=None)
@given(model_name=st.sampled_from(sorted(MODELS)), task=st.sampled_from([None, "digits", "inspection"]),
       data=st.data())
def test_every_suggestion_fits_the_budget_and_the_list_is_complete_and_sorted(model_name, task, data):
    model, targets = BUILT[model_name]
    counts = sorted({n for _, n in APPLICABLE[model_name]})
    # Any budget, or one next to a count of this model (where "at most" and "below" differ).
    budget = data.draw(st.integers(0, 60_000) | st.builds(lambda n, d: max(0, n + d), st.sampled_from(counts),
                                                          st.integers(-1, 1)), label="budget")
    fitting = [(p, n) for p, n in APPLICABLE[model_name] if n <= budget]
    if not fitting:
        with pytest.raises(ConfigError, match=rf"^budget={budget:,}: .* with {counts[0]:,} adapter parameters"):
            suggest(model, budget, task=task, targets=targets, limit=None)
        return
    found = suggest(model, budget, task=task, targets=targets, limit=None)
    for s in found:
        assert s.parameters <= budget
        assert s.parameters == (0 if s.config is None else int(count_parameters(model, s.config)))
        tasks = [task] if task else ["digits", "inspection"]
        assert [m.task for m in s.measured] == tasks
        assert s.score == pytest.approx(statistics.fmean(m.mean for m in s.measured))
    assert [sort_key(s) for s in found] == sorted(sort_key(s) for s in found)
    assert sorted(s.label for s in found) == sorted(f"{p.method} {p.budget}" for p, _ in fitting)
    assert suggest(model, budget, task=task, targets=targets, limit=3) == found[:3]


def test_the_best_within_3000_on_the_default_is_the_best_mean_of_the_shipped_results(default_model):
    data = json.loads(STUDY_FILE.read_text(encoding="utf-8"))["tasks"]
    means = {}
    for task in ("digits", "inspection"):
        for p in data[task]["points"]:
            if p["adapter_params"] <= 3000:
                means.setdefault((p["method"], p["budget"]), []).append(p["mean"])
    best = max(means, key=lambda k: statistics.fmean(means[k]))
    top = suggest(default_model, 3000)[0]
    assert (top.method, top.budget_label) == best
    assert top.parameters == top.study_parameters <= 3000  # the study's own model: the study's count
    assert top.why.startswith(f"best measured accuracy (mean of digits and inspection) of the {len(means)} ")


def test_one_task_ranks_by_that_task_alone(default_model):
    digits = suggest(default_model, 5000, task="digits", limit=None)
    assert [s.score for s in digits] == sorted((s.measured[0].mean for s in digits), reverse=True)
    assert all(len(s.measured) == 1 and s.measured[0].task == "digits" for s in digits)


def test_counts_are_this_models_not_the_studys():
    small = create_meta_model("vit_small_patch16_224")
    found = suggest(small, 3000, limit=None)
    assert any(s.parameters != s.study_parameters for s in found)
    differing = next(s for s in found if s.parameters != s.study_parameters)
    assert f"{differing.study_parameters:,} parameters on the study's model" in differing.why
    # A configuration that fits on the study's model but not on this one is left out.
    on_default = {s.label for s in suggest("superlora-default", 3000, limit=None)}
    assert {s.label for s in found} != on_default


def test_a_model_name_and_its_skeleton_give_the_same_suggestions(default_model):
    assert suggest("superlora-default", 1000, limit=None) == suggest(default_model, 1000, limit=None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=-1), r"^budget=-1: must be 0 or more"),
    (dict(budget=2.5), r"^budget=2.5: must be a whole number"),
    (dict(budget=True), r"^budget=True: must be a whole number"),
    (dict(budget="100"), r"^budget='100': must be a whole number"),
    (dict(budget=100, task="cifar"), r"^task='cifar': the study measured digits, inspection"),
    (dict(budget=100, limit=0), r"^limit=0: must be a positive whole number"),
    (dict(budget=30, study="adapters"), r"^budget=30: no adapter configuration of the study fits; the smallest on "
                                        r"this model is LoRTA M=5 ρ=0\.01 r=1 with 31 adapter parameters; raise the "
                                        r"budget to at least 31$"),
])
def test_bad_requests_are_config_errors_that_say_what_to_do(default_model, kwargs, message):
    if kwargs.get("study") == "adapters":  # a study without the head-only baseline
        kwargs = dict(kwargs, study=[p for p in load_study() if p.config is not None])
    with pytest.raises(ConfigError, match=message):
        suggest(default_model, **kwargs)


def test_below_the_smallest_adapter_the_head_alone_is_suggested_and_says_why(default_model):
    only = suggest(default_model, 30)
    assert [(s.family, s.config, s.parameters) for s in only] == [("head-only", None, 0)]
    assert only[0].why.startswith("the study's 0-parameter baseline (the head alone) is the only choice within 30")
    assert only[0].why.endswith("LoRTA M=5 ρ=0.01 r=1 with 31 adapter parameters; raise the budget to at least 31")
    # above it, head-only is ranked with the adapters by what the study measured (it scored lowest on both tasks)
    ranked = suggest(default_model, 1000, limit=None)
    assert ranked[-1].family == "head-only" and ranked[0].parameters <= 1000


def test_a_model_without_the_studys_targets_asks_for_targets():
    with pytest.raises(ConfigError, match=r"no configuration of the study applies to this model .*name targets"):
        suggest(TwoLayerMLP(), 10_000)
    assert suggest(TwoLayerMLP(), 10_000, targets=["fc1", "fc2"])[0].config.targets == ("fc1", "fc2")


def test_a_head_only_point_is_the_zero_parameter_suggestion():
    """The hook for the study's head-only baseline: a point without a config counts 0 on any model."""
    measured = {t: Measured(t, 0.6, 0.01, 3, 0.0) for t in ("digits", "inspection")}
    head = StudyPoint("head-only", "head only", "", None, 0, measured)
    lora = StudyPoint("lora", "LoRA", "r=1", superlora.preset("lora"), 4608,
                      {t: Measured(t, 0.7, 0.01, 3, 0.016) for t in ("digits", "inspection")})
    model = tiny_vit()
    only = suggest(model, 0, study=[head, lora])
    assert [(s.config, s.parameters) for s in only] == [(None, 0)]
    both = suggest(model, 10_000, study=[head, lora])
    assert [s.method for s in both] == ["LoRA", "head only"]


# ------------------------------------------------------------------------------------------------ the studio
@pytest.fixture
def sessions():
    pytest.importorskip("gradio")
    from superlora.studio import SessionStore

    store = SessionStore()
    yield store
    store.close_all()


def test_the_budget_box_lists_the_library_suggestions_and_a_pick_sets_every_control(sessions):
    from superlora.controls import ADAPTER_NAMES, VIT_TARGETS, config_from_values
    from superlora.studio import apply_suggestion, show_suggestions

    request = SimpleNamespace(session_hash="budget-tab")
    rows, choices, note = show_suggestions("superlora-default", 3000.0, sessions, request)
    library = suggest("superlora-default", 3000, limit=len(rows))
    assert [(r[1], r[2], r[3]) for r in rows] == [(s.method, s.budget_label, s.parameters) for s in library]
    assert all(r[3] <= 3000 for r in rows)
    assert rows[0][4] == f"{100 * library[0].measured[0].mean:.1f} ± {100 * library[0].measured[0].sd:.1f} (n=3)"
    assert [value for _, value in choices["choices"]] == [s.label for s in library]
    assert note.startswith(f"**#1 {library[0].label}**")
    skeleton = create_meta_model("superlora-default", num_classes=4)
    for suggestion in library:
        values = apply_suggestion("superlora-default", 3000.0, suggestion.label, sessions, request)
        controls = dict(zip(ADAPTER_NAMES, values[:-1]))
        config = config_from_values(controls, VIT_TARGETS)
        assert config == suggestion.config
        assert int(count_parameters(skeleton, config)) == suggestion.parameters
        assert values[-1].startswith("*") and controls["preset_name"] == suggestion.config.name


def test_picking_the_head_only_suggestion_picks_the_method_and_greys_out_the_adapter(sessions, monkeypatch):
    from superlora.controls import ADAPTER_CONTROLS, ADAPTER_NAMES
    from superlora.studio import apply_suggestion, model_tab
    from superlora.studio.model_tab import adapter_interactivity
    from superlora.suggestions import Suggestion

    baseline = Suggestion("head-only", "Head only", "0 params", None, 0, 0, (), 0.5, "the head alone")
    monkeypatch.setattr(model_tab, "_suggestions", lambda *args: [baseline])
    values = apply_suggestion("superlora-default", 100.0, "Head only 0 params", sessions,
                              SimpleNamespace(session_hash="budget-head-only"))
    assert len(values) == len(ADAPTER_NAMES) + 1 and values[0] == "head-only"
    assert values[1:-1] == [control.default for control in ADAPTER_CONTROLS[1:]]  # plain values for API clients
    assert values[-1].startswith("*Head only")
    # the page then greys out every adapter control after the method, and makes them editable for an adapter
    assert adapter_interactivity("head-only") == [{"__type__": "update", "interactive": False}] * (len(values) - 2)
    assert adapter_interactivity("lorta") == [{"__type__": "update", "interactive": True}] * (len(values) - 2)


def test_the_budget_box_says_what_is_wrong(sessions):
    from superlora.studio import StudioError, apply_suggestion, show_suggestions

    request = SimpleNamespace(session_hash="budget-errors")
    with pytest.raises(StudioError, match="^Budget: type the most adapter parameters"):
        show_suggestions("superlora-default", None, sessions, request)
    rows, _, note = show_suggestions("superlora-default", 10.0, sessions, request)  # below every adapter
    assert [r[3] for r in rows] == [0] and "raise the budget to at least 31" in note
    with pytest.raises(StudioError, match="does not fit this budget"):
        apply_suggestion("superlora-default", 500.0, "SuperLoRA 2D G=4 r=1", sessions, request)
