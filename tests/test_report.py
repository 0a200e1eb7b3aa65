"""Validation results a manager can act on, and the one-page run report.

Metrics against hand-counted values on fixed predictions (precision, recall, F1 with their counts, missed defects,
false alarms, a class absent from validation); the per-image records `evaluate` keeps; the validation/ folder of a
real tiny run checked against its own predictions.csv; the HTML report of a run with mistakes, of a run without
any (and a class missing from validation), and of a run saved before validation/ existed; `superlora report`;
and the report opened in headless Chromium with a screenshot.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from superlora import preset
from superlora.cli import main
from superlora.data import train_val_split
from superlora.errors import ConfigError
from superlora.report import CLASS_TABLE_HEADERS, load_validation, report_html, validation_view, write_report
from superlora.train import TrainOptions, train
from superlora.train.metrics import (
    Evaluation,
    class_stats,
    evaluate,
    good_class_summary,
    macro_average,
    resolve_good_class,
    summarize,
)
from superlora.train.checkpoint import load_checkpoint
from superlora.train.validation import read_validation

from train_helpers import colour_images, stripe_images, tiny_vit

FAST = dict(batch_size=8, lr=1e-2, head_lr=1e-2)
SECTIONS = ("summary", "data", "model", "training", "curves", "per-class", "quality", "confusion", "mistakes",
            "reproduce")


# ---------------------------------------------------------------------------------------------------- metrics
# 16 fixed predictions over ok / scratch / spot. Counted by hand:
#   true ok (6):      5 ok, 1 scratch            -> one false alarm
#   true scratch (6): 2 ok, 3 scratch, 1 spot    -> two missed, one flagged as the wrong defect
#   true spot (4):    1 ok, 3 spot               -> one missed
CLASSES = ["ok", "scratch", "spot"]
LABELS = [0] * 6 + [1] * 6 + [2] * 4
PREDICTED = [0, 0, 0, 0, 0, 1] + [0, 0, 1, 1, 1, 2] + [0, 2, 2, 2]


def fixed_evaluation() -> Evaluation:
    return summarize(torch.tensor(LABELS), torch.tensor(PREDICTED), torch.zeros(len(LABELS)), len(CLASSES))


def test_per_class_precision_recall_f1_and_counts_match_hand_counts():
    evaluation = fixed_evaluation()
    assert evaluation.confusion == [[5, 1, 0], [2, 3, 1], [1, 0, 3]]
    ok, scratch, spot = evaluation.class_stats(CLASSES)
    # ok: predicted 8 times, 5 right; 6 images, 5 found.
    assert (ok.support, ok.true_positives, ok.false_positives, ok.false_negatives) == (6, 5, 3, 1)
    assert ok.precision == pytest.approx(5 / 8) and ok.recall == pytest.approx(5 / 6)
    assert ok.f1 == pytest.approx(2 * (5 / 8) * (5 / 6) / (5 / 8 + 5 / 6))
    assert (scratch.support, scratch.true_positives, scratch.false_positives, scratch.false_negatives) == (6, 3, 1, 3)
    assert (scratch.precision, scratch.recall, scratch.f1) == pytest.approx((3 / 4, 1 / 2, 0.6))
    assert (spot.support, spot.true_positives, spot.false_positives, spot.false_negatives) == (4, 3, 1, 1)
    assert (spot.precision, spot.recall, spot.f1) == pytest.approx((3 / 4, 3 / 4, 3 / 4))
    macro = macro_average([ok, scratch, spot])
    assert macro["precision"] == pytest.approx((5 / 8 + 3 / 4 + 3 / 4) / 3)
    assert macro["recall"] == pytest.approx((5 / 6 + 1 / 2 + 3 / 4) / 3)


def test_missed_defects_and_false_alarms_match_hand_counts():
    good = good_class_summary(fixed_evaluation().confusion, CLASSES, "ok")
    assert (good.good_images, good.defect_images) == (6, 10)
    assert good.missed_defects == 3 and good.missed_defect_rate == pytest.approx(0.3)
    assert good.false_alarms == 1 and good.false_alarm_rate == pytest.approx(1 / 6)
    assert good.wrong_defect_class == 1
    assert good.missed_by_class == {"scratch": 2, "spot": 1}
    # Another good class turns the same predictions into other numbers: 'spot' images are 4, 1 of them missed.
    as_spot = good_class_summary(fixed_evaluation().confusion, CLASSES, "spot")
    assert (as_spot.good_images, as_spot.false_alarms, as_spot.missed_defects) == (4, 1, 1)


def test_a_class_missing_from_validation_divides_by_nothing():
    # "crack" has no validation image but is predicted once; "dent" is neither present nor predicted.
    classes = ["ok", "scratch", "crack", "dent"]
    confusion = [[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    ok, scratch, crack, dent = class_stats(confusion, classes)
    assert crack.support == 0 and crack.recall is None
    assert crack.false_positives == 1 and crack.precision == 0.0 and crack.f1 == 0.0
    assert (dent.precision, dent.recall, dent.f1) == (None, None, None)
    assert ok.recall == pytest.approx(3 / 4) and scratch.precision == 1.0
    assert macro_average([ok, scratch, crack, dent])["recall"] == pytest.approx((3 / 4 + 1) / 2)
    # A good class without a validation image: its false-alarm rate is undefined, not a division by zero.
    good = good_class_summary(confusion, classes, "dent")
    assert good.good_images == 0 and good.false_alarm_rate is None and good.false_alarms == 0
    assert good.missed_defects == 0 and good.missed_defect_rate == 0.0
    nothing = class_stats([[0, 0], [0, 0]], ["a", "b"])
    assert all(row.precision is None and row.recall is None and row.f1 is None for row in nothing)


def test_the_good_class_is_found_by_name_or_chosen_and_a_wrong_name_says_what_to_do():
    assert resolve_good_class(["crack", "OK", "spot"], None)[0] == "OK"
    assert resolve_good_class(["defect", "normal"], None)[0] == "normal"
    chosen, note = resolve_good_class(["a", "b"], None)
    assert chosen is None and "set good_class" in note
    chosen, note = resolve_good_class(["ok", "good", "bad"], None)
    assert chosen is None and "several classes" in note and "ok, good" in note
    assert resolve_good_class(["pass", "fail"], "fail")[0] == "fail"
    assert resolve_good_class(["Pass", "fail"], "pass")[0] == "Pass"
    with pytest.raises(ConfigError, match=r"good_class='okay' is not one of the classes \(ok, crack\)"):
        resolve_good_class(["ok", "crack"], "okay")
    with pytest.raises(ConfigError, match="good_class=''"):
        TrainOptions(good_class="")


def test_evaluate_keeps_every_image_with_its_confidence_and_top_k():
    # The "model" passes its input through, so the logits are the inputs: softmax values are known exactly.
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 2, 2, 1])
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    evaluation = evaluate(nn.Identity(), batches, 3, torch.device("cpu"), indices=[10, 12, 14, 16])
    assert [p.index for p in evaluation.predictions] == [10, 12, 14, 16]
    assert [p.predicted for p in evaluation.predictions] == [0, 1, 2, 2]
    second = evaluation.predictions[1]
    assert second.confidence == pytest.approx(math.exp(3) / (1 + math.exp(3) + math.exp(1)))
    assert [c for c, _ in second.top] == [1, 2, 0] and sum(p for _, p in second.top) == pytest.approx(1.0)
    # Mistakes: image 12 (true 2, predicted 1, p=0.84) and image 16 (true 1, predicted 2, p=0.58), surest first.
    assert [p.index for p in evaluation.mistakes()] == [12, 16]
    assert evaluation.accuracy == 0.5
    # The records survive the checkpoint's JSON round trip.
    assert Evaluation.from_dict(json.loads(json.dumps(evaluation.to_dict()))) == evaluation
    # A checkpoint from before the records existed still loads, with none.
    old = {k: v for k, v in evaluation.to_dict().items() if k != "predictions"}
    assert Evaluation.from_dict(old).predictions == ()


# ---------------------------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def stripes_run(tmp_path_factory):
    """A tiny run that learns the stripes only partly (so it has mistakes), with 'horizontal' as the good class."""
    run = tmp_path_factory.mktemp("report") / "stripes"
    train_set, val_set = train_val_split(stripe_images(16), val_fraction=0.25, seed=0)
    options = TrainOptions(epochs=2, output_dir=str(run), good_class="horizontal", **FAST)
    result = train(tiny_vit(), train_set, val_set, preset("lora", rank=2), options)
    return run, result, val_set


@pytest.fixture(scope="module")
def perfect_run(tmp_path_factory):
    """An easy run whose validation set has no 'blue' image: every validation image ends up right."""
    run = tmp_path_factory.mktemp("report") / "perfect"
    images = colour_images(per_class=12)
    train_set, val_set = train_val_split(images, val_fraction=0.25, seed=0)
    keep = [i for i, label in enumerate(val_set.labels) if images.classes[label] != "blue"]
    val_set = val_set.subset(keep)
    result = train(tiny_vit(), train_set, val_set, preset("lora", rank=2),
                   TrainOptions(epochs=3, output_dir=str(run), **FAST))
    return run, result


def read_predictions(run: Path) -> list[dict[str, str]]:
    with open(run / "validation" / "predictions.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_run_folder_keeps_every_prediction_and_the_mistakes_agree_with_them(stripes_run):
    run, result, val_set = stripes_run
    record = read_validation(run)
    rows = read_predictions(run)
    assert len(rows) == len(val_set) == record["count"]
    assert [row["file"] for row in rows] == val_set.names  # the data set's own names, in validation order
    assert [row["true_class"] for row in rows] == [val_set.classes[label] for label in val_set.labels]
    wrong = [row for row in rows if row["correct"] == "0"]
    assert len(wrong) == record["mistake_count"] > 0
    assert record["accuracy"] == pytest.approx(result.best_accuracy) == pytest.approx(1 - len(wrong) / len(rows))
    # Mistakes: the same images as the CSV's wrong rows, the surest first, each with a thumbnail on disk.
    mistakes = record["mistakes"]
    assert sorted(m["file"] for m in mistakes) == sorted(row["file"] for row in wrong)
    confidences = [m["confidence"] for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    for m in mistakes:
        assert m["true"] != m["predicted"] and m["top"][0]["class"] == m["predicted"]
        assert (run / "validation" / m["thumbnail"]).is_file()
    assert len(list((run / "validation" / "mistakes").iterdir())) == len(mistakes)
    # Missed defects and false alarms, recounted from the CSV.
    good = record["good_class"]
    missed = sum(r["true_class"] != "horizontal" and r["predicted_class"] == "horizontal" for r in rows)
    alarms = sum(r["true_class"] == "horizontal" and r["predicted_class"] != "horizontal" for r in rows)
    assert (good["missed_defects"], good["false_alarms"]) == (missed, alarms)
    assert good["defect_images"] == sum(r["true_class"] != "horizontal" for r in rows)
    # Per-class counts, recounted from the CSV.
    for stats in record["per_class"]:
        name = stats["name"]
        assert stats["support"] == sum(r["true_class"] == name for r in rows)
        assert stats["false_positives"] == sum(r["predicted_class"] == name and r["true_class"] != name for r in rows)
    # The returned result says the same as the files.
    assert json.loads(json.dumps(result.validation)) == record
    # The checkpoint keeps the records too, so a resumed run can write the same files.
    saved = load_checkpoint(run / "checkpoint.safetensors").progress["best"]["evaluation"]
    assert Evaluation.from_dict(saved).mistakes()[0].index == record["mistakes"][0]["index"]
    assert len(saved["predictions"]) == len(val_set)


def test_the_studio_view_lists_mistakes_surest_first_from_a_folder_or_from_memory(stripes_run):
    run, result, val_set = stripes_run
    from_folder = validation_view(run)
    from_memory = validation_view(result.validation, val_set.images)
    count = result.validation["mistake_count"]
    assert len(from_folder.mistakes) == len(from_memory.mistakes) == count
    assert [c for _, c in from_folder.mistakes] == [c for _, c in from_memory.mistakes]
    first = result.validation["mistakes"][0]
    assert from_folder.mistakes[0][1].startswith(f"true {first['true']}, predicted {first['predicted']} "
                                                 f"({100 * first['confidence']:.0f} %)")
    assert all(Path(image).is_file() for image, _ in from_folder.mistakes)
    assert from_memory.mistakes[0][0] is val_set.images[first["index"]]
    assert len(CLASS_TABLE_HEADERS) == len(from_folder.class_rows[0]) and len(from_folder.class_rows) == 3
    assert from_folder.quality.startswith("missed defects (defect images predicted 'horizontal')")


def section(page_html: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page_html, re.S)
    assert match, f"section {anchor} missing"
    return match.group(1)


def test_the_report_holds_every_section_offline(stripes_run, tmp_path):
    run, result, val_set = stripes_run
    moved = tmp_path / "elsewhere"
    shutil.copytree(run, moved)  # made from the run folder's files alone, wherever it lies
    path = write_report(moved, tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    for anchor in SECTIONS:
        section(page, anchor)
    assert not re.search(r"https?:", page) and "<script" not in page and "<link" not in page
    record = result.validation
    per_class = section(page, "per-class")
    for stats in record["per_class"]:
        assert f'<td class="text">{stats["name"]}</td><td>' in per_class
    assert f"{100 * result.best_accuracy:.1f} %" in section(page, "summary")
    good = record["good_class"]
    assert f"{good['missed_defects']} of {good['defect_images']}" in section(page, "quality")
    assert section(page, "mistakes").count('src="data:image/jpeg;base64,') == record["mistake_count"]
    curves = section(page, "curves")
    assert curves.count("<svg") == 2 and curves.count("<polyline") == 4 and "training loss (step)" in curves
    assert curves.count("<circle") == 10 + 2 + 2 + 2  # markers: 10 steps, 2 epochs of 3 series
    assert "<th>true \\ predicted</th>" in section(page, "confusion")
    assert "611" in section(page, "model")  # 512 adapter + 99 head parameters
    assert "SuperLoRAConfig.from_dict(" in section(page, "reproduce")
    # Counting with another good class changes the numbers, not the predictions.
    as_vertical = report_html(moved, good_class="vertical")
    assert "defect images predicted &#x27;vertical&#x27;" in section(as_vertical, "quality")


def test_a_run_without_mistakes_and_with_a_class_missing_from_validation_still_reports(perfect_run):
    run, result = perfect_run
    record = read_validation(run)
    assert record["mistakes"] == [] and record["mistake_count"] == 0 and record["accuracy"] == 1.0
    blue = next(row for row in record["per_class"] if row["name"] == "blue")
    assert blue["support"] == 0 and blue["recall"] is None and blue["f1"] is None
    assert record["good_class"] is None and "no class is named ok" in record["good_class_note"]
    page = report_html(run)
    for anchor in SECTIONS:
        section(page, anchor)
    assert "No mistakes: all 6 validation images were classified correctly." in section(page, "mistakes")
    assert "no validation image of blue" in section(page, "data")
    assert "<td>n/a</td>" in section(page, "per-class")
    assert "no class is named ok" in section(page, "quality")
    assert not (run / "validation" / "mistakes").exists() or not any((run / "validation" / "mistakes").iterdir())


def test_a_run_saved_before_validation_results_gets_a_report_with_a_note(stripes_run, tmp_path):
    run, result, _ = stripes_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    shutil.rmtree(old / "validation")
    config = json.loads((old / "config.json").read_text())
    del config["data"]["class_counts"], config["options"]["good_class"]
    (old / "config.json").write_text(json.dumps(config))
    record = load_validation(old, good_class="horizontal")
    assert record["mistakes"] is None
    assert record["per_class"] == result.validation["per_class"]  # rebuilt from metrics.json's confusion
    assert record["good_class"] == result.validation["good_class"]
    page = report_html(old, good_class="horizontal")
    for anchor in SECTIONS:
        section(page, anchor)
    assert "saved before superlora kept per-image results" in section(page, "mistakes")
    assert f"{result.validation['mistake_count']} validation images were misclassified" in section(page, "mistakes")
    assert validation_view(old).notes == ["the mistakes were not saved for this run (it predates per-image results)"]
    with pytest.raises(ConfigError, match="not a run folder"):
        report_html(tmp_path)


def test_cli_trains_with_a_good_class_prints_the_numbers_and_writes_the_report(tmp_path, capsys):
    from superlora.base_models import build_hybrid_vit, save_model

    image_set = colour_images(per_class=6)
    for index, (image, label) in enumerate(zip(image_set.images, image_set.labels)):
        folder = tmp_path / "data" / ("ok" if label == 0 else image_set.classes[label])
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    save_model(build_hybrid_vit(img_size=32, embed_dim=32, depth=1, num_heads=2, num_classes=3), tmp_path / "model")
    run = tmp_path / "run"
    common = ["train", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "--epochs", "1",
              "--batch-size", "8", "--val-fraction", "0.34"]
    assert main([*common, "--output", str(tmp_path / "bad"), "--good-class", "fine"]) == 1
    assert "good_class='fine' is not one of the classes (blue, green, ok)" in capsys.readouterr().err
    assert main([*common, "--output", str(run)]) == 0
    out = capsys.readouterr().out
    record = read_validation(run)
    good = record["good_class"]
    assert good["good_class"] == "ok"  # picked by its name
    assert f"false alarms ('ok' images predicted as a defect): {good['false_alarms']} of {good['good_images']}" in out
    assert "precision" in out and f"superlora report {run}" in out
    assert main(["report", str(run), "--output", str(tmp_path / "out.html")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'out.html'}"
    page = (tmp_path / "out.html").read_text(encoding="utf-8")
    assert f"superlora train --config {run / 'config.json'}" in section(page, "reproduce")
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "is not a run folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.browser
def test_the_report_opens_in_chromium_with_every_section(stripes_run, tmp_path):
    missing = None
    if not CHROMIUM.exists():
        missing = "Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium chromium-driver)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright pip package is missing (pip install -r requirements-dev.txt)"
    if missing:
        if os.environ.get("CI") or os.environ.get("SUPERLORA_REQUIRE_BROWSER"):
            pytest.fail(f"{missing}; CI must run the browser test (.ci/run installs Chromium)")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    run, result, _ = stripes_run
    path = write_report(run, tmp_path / "report.html")
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri())
            for anchor in SECTIONS:
                assert page.locator(f"section#{anchor} h2").is_visible(), anchor
            thumbnails = page.locator("section#mistakes img")
            assert thumbnails.count() == result.validation["mistake_count"]
            widths = thumbnails.evaluate_all("images => images.map(image => image.naturalWidth)")
            assert all(width == 16 for width in widths)  # decoded: the 16 px validation images
            # training loss per step (TensorBoard) and per epoch, validation loss, validation accuracy
            assert page.locator("section#curves svg polyline").count() == 4
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'report.png'}")
