"""The studio driven through its named API endpoints with gradio_client, as a script or a second program would.

Every endpoint with good input (numbers checked against the library) and bad input (corrupt image, non-image
file, archive with `..`, impossible config, oversized upload): a clear message comes back as an exception and
the app keeps serving. After a run on the sample, the mistakes, the per-class table and the missed-defect /
false-alarm line agree with the run folder's validation/results.json and its confusion matrix, and `/report`
returns the HTML report with every section. Also: Stop stops, two sessions training at once keep their own data and models, the
training queue is bounded, a closed session's files are deleted, and `python app.py` starts offline with its
flags. Hostile or careless clients, with raw HTTP calls: sessionless calls are refused, per-request sessions
expire, the training queue and step limits hold on every route, memory budgets, upload limits and clean-up.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError
from gradio_client.utils import Status

from superlora.config import preset
from superlora.counting import count_parameters
from superlora.errors import SuperLoRAError
from superlora.base_models import create_meta_model

from studio_helpers import (UPLOAD_LIMIT_MB, class_folder_zip, colour_image, corrupt_png, free_port,  # noqa: F401
                            many_images_zip, page_call, page_fn_index, prefixed_images, resident_bytes, studio,
                            tiny_model, upload)

ROOT = Path(__file__).resolve().parents[1]
NAMED_ENDPOINTS = ("/preset", "/count_parameters", "/suggest", "/use_suggestion", "/upload_checkpoint", "/use_sample",
                   "/load_data", "/train", "/stop", "/inspect", "/predict", "/export", "/save_config", "/load_config",
                   "/validation", "/report")
REPORT_SECTIONS = ("summary", "data", "model", "training", "curves", "per-class", "quality", "confusion", "mistakes",
                   "reproduce")
pytestmark = pytest.mark.slow


@pytest.fixture
def client(studio):  # noqa: F811
    """A new browser-like session of the shared studio."""
    _, url = studio
    session = Client(url, verbose=False)
    yield session
    session.close()


def keeps_serving(client: Client) -> None:
    """After an error the same session still gets answers."""
    assert client.predict(api_name="/count_parameters")["adapter"] > 0


def load_colours(client: Client, folder: Path, colours: tuple[str, ...], per_class: int = 8) -> tuple:
    files = [handle_file(p) for p in prefixed_images(folder, colours, per_class)]
    return client.predict(files, None, "auto", api_name="/load_data")


def run_values(*values) -> dict[str, Any]:
    """The inputs of /train by name, given in the API's order (model, adapter controls, steps, epochs, lr, batch)."""
    from superlora.studio import TRAIN_INPUT_NAMES

    return dict(zip(TRAIN_INPUT_NAMES, values))


def train(client: Client, **options) -> tuple:
    settings = dict(steps=8, batch_size=8, lr=0.01, api_name="/train")
    return client.predict(**{**settings, **options})


# ------------------------------------------------------------------------------------------------ configure
def test_every_named_endpoint_is_served(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(NAMED_ENDPOINTS) <= set(named)
    parameters = [p["parameter_name"] for p in named["/count_parameters"]["parameters"]]
    assert parameters[:3] == ["model_name", "preset_name", "rank"] and "targets" in parameters


def test_the_page_controls_are_those_of_superlora_controls(client):
    """/train takes the model, then every adapter and training control of superlora.controls by its name and with
    its default (the adapter controls added later after the training controls, so that earlier inputs keep their
    positions); the page shows each adapter control once."""
    from superlora.controls import ADAPTER_NAMES, ADDED_LATER, CONTROLS, TRAINING_NAMES
    from superlora.studio import TRAIN_INPUT_NAMES
    from superlora.studio.layout import ADAPTER_ROWS

    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    parameters = {p["parameter_name"]: p for p in named["/train"]["parameters"]}
    assert ADDED_LATER == ADAPTER_NAMES[-len(ADDED_LATER):] == ("rank_scaling",)
    first = ADAPTER_NAMES[:-len(ADDED_LATER)]
    assert list(parameters) == ["model_name", *first, *TRAINING_NAMES, *ADDED_LATER] == list(TRAIN_INPUT_NAMES)
    for name in (*ADAPTER_NAMES, *TRAINING_NAMES):
        default = CONTROLS[name].default
        assert parameters[name]["parameter_default"] == (list(default) if isinstance(default, tuple) else default)
    assert sorted(["preset_name", *(name for row in ADAPTER_ROWS for name in row)]) == sorted(ADAPTER_NAMES)


def test_count_parameters_is_the_library_count_on_the_chosen_model(client, tiny_model):  # noqa: F811
    settings = client.predict("lora", api_name="/preset")
    assert settings == {"preset_name": "lora", "groups": 0, "grouping": "layer", "fold": "native", "order": 2,
                        "splits": 1, "factoring": "lora", "projection": "none", "ratio": 1.0, "shuffle": False}
    lora = client.predict(**settings, model_name=str(tiny_model), rank=2, api_name="/count_parameters")
    # 2 blocks x (q, v), each 32 x 32 at rank 2: 4 x 2 x (32 + 32); the head maps 32 features to 4 classes.
    assert lora["adapter"] == 4 * 2 * (32 + 32) == 512
    assert lora["trainable_modules"] == 32 * 4 + 4
    assert lora["factor_vs_lora_r1"] == pytest.approx(0.5)
    assert lora["adapter_bytes"] == 4 * 512

    vit_b = client.predict(model_name="vit_base_patch16_224", preset_name="lorta", rank=4, groups=1,
                           grouping="contiguous", fold="auto", order=3, factoring="tucker",
                           api_name="/count_parameters")
    skeleton = create_meta_model("vit_base_patch16_224", num_classes=4)
    expected = count_parameters(skeleton, preset("lorta", targets=("q", "v"), rank=4, order=3), trainable=("head",))
    assert vit_b["adapter"] == expected.adapter
    assert vit_b["lora_r1"] == 24 * (768 + 768)
    assert vit_b["base_model"] == sum(p.numel() for p in skeleton.parameters())
    assert vit_b["config"]["targets"] == ["q", "v"]


def test_the_budget_box_suggests_within_the_budget_and_a_pick_sets_the_counted_controls(client):
    from superlora import suggest
    from superlora.controls import ADAPTER_NAMES

    table, picks, note = client.predict("superlora-default", 500, api_name="/suggest")
    library = suggest("superlora-default", 500, limit=len(table["data"]))
    assert [row[1:4] for row in table["data"]] == [[s.method, s.budget_label, s.parameters] for s in library]
    assert all(row[3] <= 500 for row in table["data"]) and note.startswith(f"**#1 {library[0].label}**")
    values = client.predict("superlora-default", 500, library[1].label, api_name="/use_suggestion")
    controls = dict(zip(ADAPTER_NAMES, values))
    count = client.predict(**controls, model_name="superlora-default", api_name="/count_parameters")
    assert count["adapter"] == library[1].parameters and count["config"]["name"] == library[1].config.name


@pytest.mark.parametrize("name", ["lora", "loha", "lokr", "lotr", "superlora-2d", "lorta", "lonkr"])
def test_each_preset_sets_the_controls_to_the_library_preset(name, tiny_model):  # noqa: F811
    from superlora.controls import VIT_TARGETS, config_from_values
    from superlora.studio import preset_settings

    settings = preset_settings(name)
    controls = {k: v for k, v in settings.items() if k != "preset_name"}
    config = config_from_values(dict(preset_name=name, rank=4, alpha=0, targets=["q", "v"], **controls), VIT_TARGETS)
    skeleton = create_meta_model(str(tiny_model), num_classes=4)
    library = preset(name, targets=("q", "v"), rank=4)
    assert count_parameters(skeleton, config).groups == count_parameters(skeleton, library).groups


@pytest.mark.parametrize("settings, message", [
    (dict(groups=40, grouping="layer"), r"^Groups G: groups=40: grouping='layer' puts whole targets in groups but "
                                        r"there are only 4 targets"),
    (dict(fold="native"), r"^Fold: fold='native': keeps whole weights, so groups must fall on targets"),
    (dict(ratio=0.5), r"^Projection ratio ρ: ratio=0.5: a ratio below 1 needs a projection"),
    (dict(targets=[]), r"^Adapt these weights: targets=\(\): tick at least one of q, k, v, proj or mlp"),
    (dict(factoring="lora"), r"^Factoring: factoring='lora': 'lora' builds a matrix but the fold has order 3"),
])
def test_an_impossible_config_is_a_clear_message_and_the_app_keeps_serving(client, settings, message):
    with pytest.raises(AppError, match=message) as raised:
        client.predict(**settings, api_name="/count_parameters")
    assert "Traceback" not in str(raised.value)
    keeps_serving(client)


def test_counting_vit_b_takes_well_under_200_ms_on_the_server_after_warm_up(studio):  # noqa: F811
    from superlora.studio import CONTROL_NAMES, show_count

    app, url = studio
    values = dict(zip(CONTROL_NAMES, ("vit_base_patch16_224", "lorta", 4, 0, 1, "contiguous", "auto", 3, 1,
                                      "tucker", "none", 1.0, False, ["q", "v"])))
    show_count(values, app.sessions, None)  # the first call builds the meta model once
    server = []
    for rank in range(2, 12):
        started = time.perf_counter()
        panel, error = show_count({**values, "rank": rank}, app.sessions, None)
        server.append(time.perf_counter() - started)
        assert error == "" and "adapter" in panel
    client = Client(url, verbose=False)
    try:
        round_trip = []
        for rank in range(2, 7):
            started = time.perf_counter()
            client.predict(model_name="vit_base_patch16_224", rank=rank, api_name="/count_parameters")
            round_trip.append(time.perf_counter() - started)
    finally:
        client.close()
    print(f"\nViT-B/16 count: server median {1000 * statistics.median(server):.1f} ms, "
          f"gradio_client round trip median {1000 * statistics.median(round_trip):.0f} ms")
    assert statistics.median(server) < 0.2


# ------------------------------------------------------------------------------------------------ data
def test_the_sample_data_shows_counts_thumbnails_and_picks(client):
    summary, table, gallery, rejected, picks = client.predict("inspection", api_name="/use_sample")
    assert summary.startswith("**320 images in 4 classes**")
    assert table["data"] == [[name, 80, 64, 16] for name in ("crack", "ok", "scratch", "spot")]
    assert len(gallery) == 4 * 6 and [item["caption"] for item in gallery[::6]] == ["crack", "ok", "scratch", "spot"]
    assert rejected["data"] == [["—", "no file was skipped"]]
    assert len(picks) == 4 * 2


def test_a_picked_validation_image_is_the_one_its_thumbnail_shows(monkeypatch):
    from types import SimpleNamespace

    import superlora.studio.try_tab as try_tab
    from superlora.studio import SessionStore, pick_validation_image, use_sample

    monkeypatch.setattr(try_tab, "predict_image", lambda image, top_k, sessions, request: {"shown": 1.0})
    sessions, request = SessionStore(), SimpleNamespace(session_hash="tab")
    try:
        *_, picks = use_sample("inspection", sessions, request)
        val_set = sessions.peek("tab").val_set
        assert [caption for _, caption in picks] == [name for name in val_set.classes for _ in range(2)]
        for index, (thumbnail, caption) in enumerate(picks):
            image, prediction = pick_validation_image(3, sessions, request, SimpleNamespace(index=index))
            assert val_set.classes[val_set.labels[val_set.images.index(image)]] == caption
            shrunk = image.copy()
            shrunk.thumbnail(thumbnail.size)
            assert shrunk.tobytes() == thumbnail.tobytes() and prediction == {"shown": 1.0}
    finally:
        sessions.close_all()


def test_a_zip_of_class_folders_loads_and_lists_the_files_it_skipped(client, tmp_path):
    archive = class_folder_zip(tmp_path / "colours.zip", ("red", "green"), per_class=5, extra={
        "green/notes.txt": b"not an image",
        "red/broken.png": corrupt_png(tmp_path / "broken.png").read_bytes(),
    })
    summary, table, _, rejected, _ = client.predict([handle_file(archive)], None, "auto", api_name="/load_data")
    assert "10 images in 2 classes" in summary and "2 file(s) were skipped" in summary
    assert table["data"] == [["green", 5, 4, 1], ["red", 5, 4, 1]]
    reasons = dict(rejected["data"])
    assert reasons["green/notes.txt"].startswith("not a readable image")
    assert reasons["red/broken.png"].startswith("corrupt or truncated image")


def test_images_take_labels_from_prefixes_or_from_a_csv(client, tmp_path):
    paths = prefixed_images(tmp_path / "prefixed", ("red", "blue"), per_class=4)
    (tmp_path / "prefixed" / "README.txt").write_text("hello")
    files = [handle_file(p) for p in [*paths, tmp_path / "prefixed" / "README.txt"]]
    summary, table, _, rejected, _ = client.predict(files, None, "auto", api_name="/load_data")
    assert table["data"] == [["blue", 4, 3, 1], ["red", 4, 3, 1]]
    assert rejected["data"] == [["README.txt", "file name has no 'label_' prefix (expected e.g. scratch_0001.png)"]]

    plain = tmp_path / "plain"
    plain.mkdir()
    rows = ["path,label"]
    for index, path in enumerate(paths):
        target = plain / f"image{index}.png"
        target.write_bytes(path.read_bytes())
        rows.append(f"{target.name},{'warm' if path.name.startswith('red') else 'cold'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    files = [handle_file(p) for p in sorted(plain.iterdir())]
    summary, table, *_ = client.predict(files, handle_file(tmp_path / "labels.csv"), "auto", api_name="/load_data")
    assert table["data"] == [["cold", 4, 3, 1], ["warm", 4, 3, 1]]


def evil_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("red/000.png", b"x")
        zf.writestr("../escape.png", b"x")
    return path


@pytest.mark.parametrize("make_upload, labels, message", [
    (lambda tmp: [evil_zip(tmp / "evil.zip")], "auto",
     r"evil\.zip was refused: member '\.\./escape\.png' contains '\.\.'"),
    (lambda tmp: [tmp / "notes.txt"], "auto", r"^no usable image in the 1 listed files"),
    (lambda tmp: [corrupt_png(tmp / "red_1.png")], "auto", r"corrupt or truncated image"),
    (lambda tmp: prefixed_images(tmp / "one", ("red",), 3), "auto", r"found 1 class \(red\).*needs at least 2"),
    (lambda tmp: prefixed_images(tmp / "two", ("red", "blue"), 2), "folders", r"^Labels from folders need a \.zip"),
    (lambda tmp: [class_folder_zip(tmp / "a.zip", ("red", "blue")), *prefixed_images(tmp / "x", ("red",), 1)],
     "auto", r"^Upload either one \.zip or image files, not both"),
])
def test_a_bad_upload_is_a_clear_message_and_the_app_keeps_serving(client, tmp_path, make_upload, labels, message):
    (tmp_path / "notes.txt").write_text("not an image")
    files = [handle_file(p) for p in make_upload(tmp_path)]
    with pytest.raises(AppError, match=message):
        client.predict(files, None, labels, api_name="/load_data")
    keeps_serving(client)


def test_uploads_over_the_size_limit_are_refused(client, studio, tmp_path):  # noqa: F811
    import httpx

    big = tmp_path / "red_big.png"
    big.write_bytes(os.urandom((UPLOAD_LIMIT_MB + 1) * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict([handle_file(big)], None, "auto", api_name="/load_data")
    _, url = studio
    with big.open("rb") as stream:  # the server refuses it too, whatever the client
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (big.name, stream)}, timeout=60)
    assert response.status_code == 413
    assert response.text == f"File size exceeded maximum allowed size of {UPLOAD_LIMIT_MB * 1024 * 1024} bytes."
    keeps_serving(client)


# ------------------------------------------------------------------------------------------------ a whole run
def test_train_predict_inspect_and_export_agree_with_the_library(client, tiny_model, tmp_path):  # noqa: F811
    from superlora.inference import load_trained

    with pytest.raises(AppError, match=r"^Load data first"):
        train(client)
    with pytest.raises(AppError, match=r"^Train a model first"):
        client.predict(["adapter"], api_name="/export")
    load_colours(client, tmp_path / "images", ("red", "green", "blue"))
    with pytest.raises(AppError, match=r"^Groups G: groups=40"):
        train(client, groups=40, grouping="layer")
    with pytest.raises(AppError, match=r"^Pretrained weights for 'deit_tiny_patch16_224' are not on this machine .*"
                                       r"In the studio: pick superlora-default or a local folder"):
        train(client, model_name="deit_tiny_patch16_224")

    status, curves, per_class, confusion = train(client)
    assert status.startswith("**Done** after 8 steps · best validation accuracy")
    assert [row[0] for row in per_class["data"]] == ["blue", "green", "red"]
    assert curves["type"] == "plotly" and confusion["type"] == "plotly"

    red = tmp_path / "red_probe.png"
    colour_image("red", seed=99).save(red)
    prediction = client.predict(handle_file(red), 2, api_name="/predict")
    confidences = {c["label"]: c["confidence"] for c in prediction["confidences"]}
    assert len(confidences) == 2 and set(confidences) <= {"red", "green", "blue"}
    assert prediction["label"] == max(confidences, key=confidences.get)

    (tmp_path / "notes.txt").write_text("hello")
    for bad, reason in ((corrupt_png(tmp_path / "broken.png"), "corrupt or truncated image"),
                        (tmp_path / "notes.txt", "not a readable image")):
        with pytest.raises(AppError, match=f"^That file cannot be classified: {reason}"):
            client.predict(handle_file(bad), 3, api_name="/predict")
    keeps_serving(client)

    note, target, norms, spectra, heatmap = client.predict(None, api_name="/inspect")
    assert note.startswith("4 weights were updated")
    assert [choice[1] for choice in target["choices"]] == [f"blocks.{b}.attn.qkv.{t}" for b in (0, 1) for t in "qv"]
    assert all(figure["type"] == "plotly" for figure in (norms, spectra, heatmap))

    files = client.predict(["adapter", "merged", "onnx"], api_name="/export")
    names = sorted(Path(f).name for f in files)
    assert names == ["model.onnx", "superlora-adapter.zip", "superlora-merged.zip"]
    adapter_zip = next(Path(f) for f in files if f.endswith("adapter.zip"))
    with zipfile.ZipFile(adapter_zip) as zf:
        zf.extractall(tmp_path / "export")
    trained = load_trained(tmp_path / "export" / "superlora-adapter", model=str(tiny_model))
    assert trained.classes == ["blue", "green", "red"]
    (ranked,) = trained.predict([red], top_k=2)
    assert dict(ranked) == pytest.approx(confidences, abs=1e-5)  # the download is the model the studio used


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def check_against_confusion(table: dict, record: dict) -> None:
    """The class table is the run folder's record, and its counts are those of the confusion matrix."""
    from superlora.report import CLASS_TABLE_HEADERS

    assert table["headers"] == CLASS_TABLE_HEADERS
    confusion = record["confusion"]
    assert [row[0] for row in table["data"]] == record["classes"] == ["crack", "ok", "scratch", "spot"]
    for index, (row, stats) in enumerate(zip(table["data"], record["per_class"])):
        true_positives = confusion[index][index]
        predicted = sum(line[index] for line in confusion)
        assert row[4:] == [sum(confusion[index]), true_positives, predicted - true_positives,
                           sum(confusion[index]) - true_positives]
        assert row[4:] == [stats["support"], stats["true_positives"], stats["false_positives"],
                           stats["false_negatives"]]
        recall = true_positives / sum(confusion[index])
        precision = true_positives / predicted if predicted else None
        assert row[1:3] == [_percent(precision), _percent(recall)]
        assert row[3] == _percent(stats["f1"])
    assert sum(row[4] for row in table["data"]) == record["count"] == 64


def test_the_mistakes_class_table_and_report_agree_with_the_run_folder(client, studio):  # noqa: F811
    app, _ = studio
    with pytest.raises(AppError, match=r"^Train a model first \(Train tab\): the mistakes, the per-class table and "
                                       r"the report"):
        client.predict("auto", api_name="/report")
    client.predict("inspection", api_name="/use_sample")
    with pytest.raises(AppError, match=r"^Good \(defect-free\) class: good_class='nope' is not one of the classes "
                                       r"\(crack, ok, scratch, spot\)"):
        train(client, good_class="nope")
    session = app.sessions.peek(client.session_hash)
    assert session.run_dir is None and not list(session.folder.glob("run-*"))  # the refused run left nothing

    status, *_ = train(client, steps=6, batch_size=16)
    assert status.startswith("**Done** after 6 steps")
    record = json.loads((session.run_dir / "validation" / "results.json").read_text())
    mistakes, table, quality = client.predict("auto", api_name="/validation")
    check_against_confusion(table, record)

    confusion = record["confusion"]
    wrong = sum(confusion[t][p] for t in range(4) for p in range(4) if t != p)
    assert record["mistake_count"] == wrong > 0 and len(mistakes) == min(wrong, 100)
    for shown, mistake in zip(mistakes, record["mistakes"]):
        assert shown["caption"].startswith(f"true {mistake['true']}, predicted {mistake['predicted']} "
                                           f"({100 * mistake['confidence']:.0f} %) · top: ")
        assert shown["caption"].endswith(mistake["file"]) and Path(shown["image"]).is_file()
    confidences = [m["confidence"] for m in record["mistakes"]]
    assert confidences == sorted(confidences, reverse=True)

    # The sample's 'ok' is the good class: missed defects are defects predicted ok, false alarms ok predicted else.
    ok = 1
    missed, alarms = sum(confusion[t][ok] for t in (0, 2, 3)), sum(confusion[ok]) - confusion[ok][ok]
    assert quality.startswith(f"**{wrong} of 64 validation images misclassified.**")
    assert f"predicted 'ok'): {missed} of 48 " in quality and f"as a defect): {alarms} of 16 " in quality
    scratch = 2
    recounted = client.predict("scratch", api_name="/validation")[2]
    assert f"predicted 'scratch'): {sum(confusion[t][scratch] for t in (0, 1, 3))} of 48 " in recounted

    report = Path(client.predict("auto", api_name="/report"))
    document = report.read_text(encoding="utf-8")
    for anchor in REPORT_SECTIONS:
        assert f'<section id="{anchor}">' in document, anchor
    assert document.count("<figure") == min(wrong, 100) and "<script" not in document
    assert f"{missed} of 48" in document and "Run report: run-" in document

    # A new run replaces the previous run folder (and the report made from it).
    previous = session.run_dir
    train(client, steps=3, batch_size=16)
    assert not previous.exists() and session.run_dir.is_dir()
    assert [p.name for p in session.folder.iterdir()] == [session.run_dir.name]


def test_stop_ends_a_long_run_within_moments_and_the_page_stays_responsive(client, tmp_path):
    assert client.predict(api_name="/stop") == "Nothing is training."
    load_colours(client, tmp_path, ("red", "blue"), per_class=6)
    job = client.submit(steps=2000, batch_size=4, lr=0.01, api_name="/train")
    deadline = time.monotonic() + 60
    while not any("step" in str(output[0]) for output in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), job.outputs()
        time.sleep(0.2)
    started = time.perf_counter()
    keeps_serving(client)  # counting answers while this session trains
    assert time.perf_counter() - started < 5
    assert client.predict(api_name="/stop") == "Stopping after the current step…"
    stopped_at = time.monotonic()
    status, *_ = job.result(timeout=60)
    assert time.monotonic() - stopped_at < 20
    steps = int(re.match(r"\*\*Stopped\*\* after (\d+) steps", status).group(1))
    assert 0 < steps < 2000


def test_two_sessions_training_at_once_keep_their_own_data_and_models(studio, tmp_path):  # noqa: F811
    _, url = studio
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    try:
        load_colours(first, tmp_path / "a", ("red", "green"))
        class_folder_zip(tmp_path / "b.zip", ("blue", "yellow"), per_class=8)
        second.predict([handle_file(tmp_path / "b.zip")], None, "auto", api_name="/load_data")
        jobs = [client.submit(steps=10, batch_size=8, lr=0.01, api_name="/train") for client in (first, second)]
        results = [job.result(timeout=180) for job in jobs]
        assert [[row[0] for row in per_class["data"]] for _, _, per_class, _ in results] == \
            [["green", "red"], ["blue", "yellow"]]
        probe = tmp_path / "probe.png"
        colour_image("blue", seed=5).save(probe)
        answers = [client.predict(handle_file(probe), 4, api_name="/predict") for client in (first, second)]
        assert {c["label"] for c in answers[0]["confidences"]} == {"red", "green"}
        assert {c["label"] for c in answers[1]["confidences"]} == {"blue", "yellow"}
    finally:
        first.close()
        second.close()


def test_stop_while_queued_cancels_the_run_before_it_starts():
    from types import SimpleNamespace

    from superlora.studio import SessionStore, mark_queued, stop_training, train_model

    sessions, request = SessionStore(), SimpleNamespace(session_hash="tab-1")
    try:
        mark_queued(sessions, request)  # the Start button's first step; the run then waits for a slot
        assert stop_training(sessions, request) == "Stopping after the current step…"
        outputs = list(train_model(run_values("unused", "lorta", 4, 0, 1, "contiguous", "auto", 3, 1, "tucker", "none",
                                              1.0, False, ["q", "v"], 10, 0, 3e-3, 8), sessions, request))
        assert outputs == [("Stopped before training started.", *[outputs[0][1]] * 3)]
        assert sessions.get(request).phase == "idle"
    finally:
        sessions.close_all()


def test_idle_sessions_are_closed_and_their_folders_deleted():
    from types import SimpleNamespace

    from superlora.studio import SessionStore

    sessions = SessionStore(idle_s=0.05)
    try:
        first = sessions.get(SimpleNamespace(session_hash="../../escape"))
        assert first.workdir.parent == sessions.root  # the folder name never comes from the client
        (first.workdir / "upload.png").write_bytes(b"x")
        time.sleep(0.1)
        second = sessions.get(SimpleNamespace(session_hash="tab-2"))
        assert first.closed and not first.folder.exists()
        assert sessions.peek("../../escape") is None and sessions.peek("tab-2") is second
    finally:
        sessions.close_all()
    assert not sessions.root.exists()


# ------------------------------------------------------------------------------------------------ hostile clients
# after the model: the adapter controls (ADAPTER_NAMES); /train takes the last (rank_scaling) after its own controls,
# so `run_values(model, *COUNT_VALUES[:-1], steps, ...)` leaves it at the default
COUNT_VALUES = ["lora", 2, 0, 0, "layer", "native", 2, 1, "lora", "none", 1.0, False, ["q", "v"], "none"]


def call_route(url: str, endpoint: str, data: list) -> tuple[str, Any]:
    """One /gradio_api/call/ request as a raw HTTP client makes it: (last event name, its data)."""
    import httpx

    api = f"{url}gradio_api/call/{endpoint}"
    joined = httpx.post(api, json={"data": data}, timeout=30)
    if joined.status_code != 200:
        return f"http {joined.status_code}", joined.json()["detail"]
    stream = httpx.get(f"{api}/{joined.json()['event_id']}", timeout=120).text
    event = re.findall(r"^event: (\w+)$", stream, re.M)[-1]
    return event, json.loads(re.findall(r"^data: (.*)$", stream, re.M)[-1])


def test_sessionless_run_calls_are_refused_while_clients_and_the_page_keep_working(studio, client, tiny_model
                                                                                    ):  # noqa: F811
    import httpx

    app, url = studio
    for endpoint in NAMED_ENDPOINTS:  # every queued endpoint: Gradio's api_open=False
        refused = httpx.post(f"{url}gradio_api/run{endpoint}", json={"data": []}, timeout=30)
        assert refused.status_code == 404 and "join the queue" in refused.json()["detail"], endpoint
    # The page's unqueued listeners answer /run/ only with a session hash (the page always sends one).
    listener = {"data": [str(tiny_model), *COUNT_VALUES], "fn_index": page_fn_index(app, "show_count")}
    refused = httpx.post(f"{url}gradio_api/run/predict", json=listener, timeout=30)
    assert refused.status_code == 500
    assert refused.json()["error"].startswith("This studio answers only calls that belong to a session")
    answered = httpx.post(f"{url}gradio_api/run/predict", json={**listener, "session_hash": "tab-x"}, timeout=30)
    assert answered.status_code == 200 and "**512**" in answered.json()["data"][0]
    assert httpx.post(f"{url}gradio_api/queue/join", json=listener, timeout=30).status_code == 400
    keeps_serving(client)


def test_per_request_sessions_do_not_share_data_and_expire_unless_connected(studio, client, tiny_model
                                                                            ):  # noqa: F811
    app, url = studio
    keeps_serving(client)  # this session has an open heartbeat
    before = set(app.sessions.hashes())
    event, data = call_route(url, "use_sample", ["digits"])  # one raw caller loads 10 classes
    assert event == "complete" and data[0].startswith("**5000 images in 10 classes**")
    event, data = call_route(url, "count_parameters", [str(tiny_model), *COUNT_VALUES])
    assert event == "complete" and data[0]["trainable_modules"] == 32 * 4 + 4  # still the 4-class default head
    per_request = set(app.sessions.hashes()) - before
    assert len(per_request) == 2
    idle_s = app.sessions.idle_s
    app.sessions.idle_s = 0.5
    try:
        time.sleep(1.0)
        app.sessions.sweep()
        assert per_request.isdisjoint(app.sessions.hashes())
        assert client.session_hash in app.sessions.hashes()  # connected: kept however long it idles
    finally:
        app.sessions.idle_s = idle_s
    keeps_serving(client)


def test_the_sweeper_drops_idle_sessions_without_calls_but_not_connected_ones():
    from types import SimpleNamespace

    from superlora.studio import SessionStore, StudioError

    sessions = SessionStore(idle_s=0.1)
    try:
        with pytest.raises(StudioError, match=r"^This studio answers only calls that belong to a session"):
            sessions.get(SimpleNamespace(session_hash=None))  # a Gradio request without a session
        idle, connected = (sessions.get(SimpleNamespace(session_hash=name)) for name in ("idle", "connected"))
        sessions.heartbeat("connected", True)
        sessions.start_sweeper()
        deadline = time.monotonic() + 10
        while not idle.closed:
            assert time.monotonic() < deadline, "the idle session was not dropped"
            time.sleep(0.05)
        assert not connected.closed and sessions.hashes() == ["connected"]
        sessions.heartbeat("connected", False)
        while not connected.closed:
            assert time.monotonic() < deadline, "the session was not dropped after its heartbeat closed"
            time.sleep(0.05)
    finally:
        sessions.close_all()


def wait_for_steps(job) -> None:
    deadline = time.monotonic() + 90
    while not any("step" in str(output[0]) for output in job.outputs()):
        failed = job.exception() if job.done() else None
        assert time.monotonic() < deadline and not job.done(), (job.outputs(), failed)
        time.sleep(0.2)


def test_the_training_queue_and_step_limits_hold_on_every_route(studio, tiny_model, tmp_path):  # noqa: F811
    app, url = studio
    limits = app.sessions.limits
    clients = [Client(url, verbose=False) for _ in range(4)]
    # model, adapter controls, steps, epochs, lr, batch_size, good_class, head_lr, pick_lr, rank_scaling
    raw_train = [str(tiny_model), *COUNT_VALUES[:-1], 101, 0, 0.01, 4, "auto", 0.01, False, COUNT_VALUES[-1]]
    try:
        for client in clients[:3]:
            load_colours(client, tmp_path, ("red", "blue"), per_class=6)  # 10 training images
        app.sessions.limits = dataclasses.replace(limits, max_steps=100)
        with pytest.raises(ValidationError, match=r"- steps: This run would take 101 steps, over the limit of 100 "
                                                  r"per run \(--max-steps\)"):
            clients[0].predict(steps=101, batch_size=4, api_name="/train")
        with pytest.raises(ValidationError, match=r"would take 150 steps"):  # 50 epochs of 3 batches
            clients[0].predict(epochs=50, batch_size=4, api_name="/train")
        assert call_route(url, "train", raw_train)[0] == "http 422"

        app.sessions.limits = dataclasses.replace(limits, max_queued_jobs=1)
        running = []
        for client in clients[:2]:  # one at a time: a job the loaded queue has not yet moved to a slot counts as
            running.append(client.submit(steps=2000, batch_size=4, api_name="/train"))  # waiting
            wait_for_steps(running[-1])  # then both slots of this studio are taken
        waiting = clients[2].submit(steps=3, batch_size=4, api_name="/train")
        deadline = time.monotonic() + 30
        while app.sessions.waiting_jobs() != 1:
            assert time.monotonic() < deadline, "the third run did not wait in the queue"
            time.sleep(0.1)
        full = r"The training queue is full: 1 runs are waiting for a slot \(at most 1, --max-queued-jobs\)"
        with pytest.raises(ValidationError, match=full):
            clients[3].predict(steps=3, batch_size=4, api_name="/train")
        event, detail = call_route(url, "train", [*raw_train[:14], 3, 0, 0.01, 4, "auto", 0.01, False, "none"])
        assert event == "http 422" and re.search(full, detail[14]["message"])
        for client in clients[:2]:
            client.predict(api_name="/stop")
        assert all(job.result(timeout=60)[0].startswith("**Stopped**") for job in running)
        assert waiting.result(timeout=120)[0].startswith("**Done** after 3 steps")
    finally:
        app.sessions.limits = limits
        for client in clients:
            client.close()


def test_two_thousand_512_px_images_cost_under_800_mb(tmp_path):
    from types import SimpleNamespace

    from superlora.studio import SessionStore, load_data

    sessions, request = SessionStore(), SimpleNamespace(session_hash="many")
    archive = many_images_zip(tmp_path / "many.zip", 2000, side=512)
    try:
        gc.collect()
        before = resident_bytes()
        summary, table, *_ = load_data([str(archive)], None, "auto", sessions, request)
        gc.collect()
        grown = resident_bytes() - before
        print(f"\n2000 PNGs of 512 x 512 ({archive.stat().st_size / 2**20:.1f} MiB zip): server memory "
              f"+{grown / 2**20:.0f} MiB, {sessions.memory_used() / 2**20:.0f} MiB of pixels at 256 px")
        assert summary.startswith("**2000 images in 2 classes**")
        assert sessions.memory_used() == 2000 * 256 * 256 * 4
        assert grown < 800 * 2**20
    finally:
        sessions.close_all()


def test_memory_budgets_refuse_an_upload_with_a_clear_message_and_leave_no_files(tmp_path):
    from types import SimpleNamespace

    from superlora.studio import SessionStore, StudioError, StudioLimits, load_data, use_sample

    small, large = (many_images_zip(tmp_path / f"{n}.zip", n, side=64) for n in (60, 120))  # 0.94, 1.9 MiB
    first, second = SimpleNamespace(session_hash="first"), SimpleNamespace(session_hash="second")
    sessions = SessionStore(StudioLimits(image_side=64, session_memory_mb=1, memory_mb=1))
    try:
        with pytest.raises(StudioError, match=r"^Your images do not fit into the memory one session may use for "
                                              r"images \(1 MiB, --session-memory-mb\): the first 65 of 120 files"):
            load_data([str(large)], None, "auto", sessions, first)
        with pytest.raises(StudioError, match=r"do not fit into the memory one session may use"):
            use_sample("digits", sessions, first)  # 15 MiB of 28-px digits
        load_data([str(small)], None, "auto", sessions, first)
        assert sessions.memory_used() == 60 * 64 * 64 * 4
        with pytest.raises(StudioError, match=r"^The server's memory for images \(1 MiB for all sessions, "
                                              r"--memory-mb\) is in use by other sessions"):
            load_data([str(small)], None, "auto", sessions, second)
        assert sessions.memory_used() == 60 * 64 * 64 * 4
        assert not list(sessions.root.rglob("upload-*"))
    finally:
        sessions.close_all()
    sessions = SessionStore(StudioLimits(image_side=64, session_memory_mb=2, memory_mb=3))
    try:
        load_data([str(large)], None, "auto", sessions, first)
        with pytest.raises(StudioError, match=r"do not fit into the memory left for images on this server \(1 MiB "
                                              r"of 3 MiB shared by all sessions, --memory-mb\)"):
            load_data([str(large)], None, "auto", sessions, second)
    finally:
        sessions.close_all()


def test_uploads_are_deduplicated_limited_and_every_error_leaves_no_copies(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import superlora.studio.data_tab as studio_module
    from superlora.studio import SessionStore, StudioError, StudioLimits, load_data

    copied = []
    copy_uploads = studio_module._copy_uploads
    monkeypatch.setattr(studio_module, "_copy_uploads", lambda paths, folder: copied.extend(
        p.name for p in paths) or copy_uploads(paths, folder))
    sessions, request = SessionStore(StudioLimits(max_upload_files=5)), SimpleNamespace(session_hash="tab")
    images = [str(p) for p in prefixed_images(tmp_path / "images", ("red", "blue"), per_class=2)]
    try:
        summary, table, *_ = load_data(images * 75, None, "auto", sessions, request)  # each listed 75 times
        assert table == [["blue", 2, 1, 1], ["red", 2, 1, 1]]
        assert "⚠️ 296 file(s) were listed more than once; each was used once" in summary
        assert sorted(copied) == sorted(Path(p).name for p in images)
        extra = [str(p) for p in prefixed_images(tmp_path / "more", ("green",), per_class=2)]
        with pytest.raises(StudioError, match=r"^6 files were uploaded at once, over the limit of 5 "
                                              r"\(--max-upload-files\)"):
            load_data(images + extra, None, "auto", sessions, request)
        (tmp_path / "notes.txt").write_text("not an image")
        for files, labels, message in ((images, "folders", r"^Labels from folders need a \.zip"),
                                       ([str(tmp_path / "notes.txt")], "auto", r"^no usable image"),
                                       ([str(corrupt_png(tmp_path / "red_bad.png"))], "auto", r"^no usable image")):
            with pytest.raises(SuperLoRAError, match=message):
                load_data(files, None, labels, sessions, request)
        assert len(copied) == 4 + 2  # the refused uploads were never copied; the bad files were, once each
        assert not list(sessions.root.rglob("upload-*")) and not list(sessions.root.rglob("*.png"))
    finally:
        sessions.close_all()



def test_head_only_counts_zero_greys_out_the_adapter_controls_trains_and_exports(tiny_model, tmp_path):  # noqa: F811
    from types import SimpleNamespace

    from superlora.controls import PRESET_CONTROL_NAMES
    from superlora.studio import CONTROL_NAMES, SessionStore, count_endpoint, export_model, load_data, train_model
    from superlora.studio.model_tab import USER_CONTROL_NAMES, preset_controls, show_count

    head_only = ["head-only", *COUNT_VALUES[1:]]  # the adapter controls keep LoRA's values: they are ignored
    sessions, request = SessionStore(), SimpleNamespace(session_hash="tab")
    try:
        updates = preset_controls("head-only")
        assert len(updates) == len(PRESET_CONTROL_NAMES) + len(USER_CONTROL_NAMES) + 1
        assert all(update["interactive"] is False for update in updates[:-1]) and "Head only" in updates[-1]
        assert all(update["interactive"] is True for update in preset_controls("lora")[:-1])
        load_data([str(p) for p in prefixed_images(tmp_path, ("red", "blue"), per_class=4)], None, "auto",
                  sessions, request)
        values = dict(zip(CONTROL_NAMES, [str(tiny_model), *head_only]))
        counted = count_endpoint(values, sessions, request)
        assert counted["adapter"] == 0 and counted["trainable_modules"] == 32 * 2 + 2
        assert counted["config"]["name"] == "head-only" and counted["config"]["targets"] == []
        panel, error = show_count(values, sessions, request)
        assert error == "" and "| **adapter parameters** | **0** |" in panel and "No adapter" in panel
        *_, (status, *_) = train_model(run_values(str(tiny_model), *head_only[:-1], 3, 0, 0.01, 4, "auto", 0.02),
                                       sessions, request)
        assert status.startswith("**Done** after 3 steps")
        result = sessions.peek("tab").result
        assert result.model.config.head_only and result.model.num_trainable_parameters(False) == 0
        options = json.loads((sessions.peek("tab").run_dir / "config.json").read_text())["options"]
        assert options["head_lr"] == 0.02
        files = export_model(["adapter", "merged"], sessions, request)
        assert sorted(Path(f).name for f in files) == ["superlora-adapter.zip", "superlora-merged.zip"]
    finally:
        sessions.close_all()


def test_the_train_inputs_default_to_superlora_defaults(client):
    from superlora import defaults

    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    parameters = {p["parameter_name"]: p["parameter_default"] for p in named["/train"]["parameters"]}
    assert (parameters["lr"], parameters["head_lr"], parameters["steps"], parameters["batch_size"]) == \
        (defaults.DEFAULT_LR, defaults.DEFAULT_HEAD_LR, defaults.DEFAULT_STEPS, defaults.DEFAULT_BATCH_SIZE)
    assert parameters["pick_lr"] is False  # the lr pick is asked for, never on by default


def test_picking_the_lr_runs_three_short_runs_first_and_says_what_it_picked(tiny_model, tmp_path):  # noqa: F811
    from types import SimpleNamespace

    from superlora.studio import SessionStore, load_data, train_model

    sessions, request = SessionStore(), SimpleNamespace(session_hash="tab")
    try:
        load_data([str(p) for p in prefixed_images(tmp_path, ("red", "blue"), per_class=4)], None, "auto",
                  sessions, request)
        values = run_values(str(tiny_model), *COUNT_VALUES[:-1], 4, 0, 0.01, 4, "auto", 0.01, True)
        outputs = list(train_model(values, sessions, request))
        lines = [status for status, *_ in outputs]
        for index, lr in enumerate((0.015, 0.03, 0.06), 1):  # each probe is one step: a quarter of 4
            assert any(f"Picking the learning rate: short run {index} of 3 at lr {lr:g} · step 1/1" in line
                       for line in lines), lines
        status = lines[-1]
        assert status.startswith("**Done** after 4 steps"), status
        run_config = json.loads((sessions.peek("tab").run_dir / "config.json").read_text())
        pick = run_config["lr_pick"]
        assert [p["lr"] for p in pick["probes"]] == [0.015, 0.03, 0.06] and run_config["options"]["lr"] == pick["lr"]
        best = min(pick["probes"], key=lambda p: (p["loss"], -p["accuracy"], p["lr"]))
        assert pick["lr"] == best["lr"] and f"Adapter learning rate **{pick['lr']:g}**, picked by short runs" in status
        # the curves are the run's own 4 steps, not the probes'
        assert [e.kind for e in sessions.peek("tab").events].count("step") == 4
    finally:
        sessions.close_all()


def studio_with_a_run(tiny_model, tmp_path):  # noqa: F811
    """(sessions, request): a session "tab" with 8 colour images loaded and a 3-step run kept."""
    from types import SimpleNamespace

    from superlora.studio import SessionStore, load_data, train_model

    sessions, request = SessionStore(), SimpleNamespace(session_hash="tab")
    load_data([str(p) for p in prefixed_images(tmp_path, ("red", "blue"), per_class=4)], None, "auto",
              sessions, request)
    list(train_model(run_values(str(tiny_model), *COUNT_VALUES[:-1], 3, 0, 0.01, 4), sessions, request))
    return sessions, request


def test_a_stop_while_picking_the_lr_trains_nothing_and_keeps_the_previous_run(tiny_model, tmp_path,  # noqa: F811
                                                                                monkeypatch):
    from types import SimpleNamespace

    from superlora.studio import train_model
    from superlora.train import auto_lr

    sessions, request = studio_with_a_run(tiny_model, tmp_path)
    try:
        session = sessions.peek("tab")
        kept, folders = session.run_dir, sorted(session.folder.iterdir())

        def stopped_probe(*args, stop=None, **kwargs):  # the user presses Stop during the first short run
            stop.request()
            return SimpleNamespace(stopped=True)

        monkeypatch.setattr(auto_lr, "train", stopped_probe)
        values = run_values(str(tiny_model), *COUNT_VALUES[:-1], 4, 0, 0.01, 4, "auto", 0.01, True)
        *_, (status, curves, per_class, confusion) = train_model(values, sessions, request)
        assert status == "**Stopped** while picking the learning rate; nothing was trained (tabs 4 to 6 still use " \
                         "the previous run)."
        assert session.run_dir == kept and sorted(session.folder.iterdir()) == folders and session.phase == "idle"
    finally:
        sessions.close_all()


def test_the_lr_box_is_greyed_out_while_the_lr_is_picked_and_for_head_only():
    from superlora.studio.train_tab import lr_interactivity

    lr, pick = lr_interactivity("lorta", False)
    assert lr["interactive"] is True and pick["interactive"] is True and "value" not in pick
    lr, pick = lr_interactivity("lorta", True)
    assert lr["interactive"] is False and pick["interactive"] is True and "value" not in pick
    lr, pick = lr_interactivity("head-only", True)  # no adapter lr to set or to pick: the tick is cleared
    assert lr["interactive"] is False and pick == {"__type__": "update", "interactive": False, "value": False}


def test_the_lr_pick_counts_against_the_step_limit():
    from superlora.studio import SessionStore
    from superlora.studio.sessions import StudioLimits
    from superlora.studio.train_tab import training_refusal

    # the probes count against the step limit: 6,000 steps take 10,500 with them
    limited = SessionStore(StudioLimits(max_steps=10_000))
    try:
        assert training_refusal(None, limited, 6000, 0, 32) is None
        refusal = training_refusal(None, limited, 6000, 0, 32, pick_lr=True)
        assert refusal.startswith("This run would take 10,500 steps, the short runs that pick the learning rate "
                                  "included, over the limit of 10,000")
    finally:
        limited.close_all()


def test_a_new_export_replaces_the_previous_one(tiny_model, tmp_path):  # noqa: F811
    from types import SimpleNamespace

    from superlora.studio import SessionStore, export_model, load_data, train_model

    sessions, request = SessionStore(), SimpleNamespace(session_hash="tab")
    try:
        load_data([str(p) for p in prefixed_images(tmp_path, ("red", "blue"), per_class=4)], None, "auto",
                  sessions, request)
        *_, (status, *_) = train_model(run_values(str(tiny_model), *COUNT_VALUES[:-1], 3, 0, 0.01, 4), sessions, request)
        assert status.startswith("**Done** after 3 steps")
        first = export_model(["adapter"], sessions, request)
        second = export_model(["adapter"], sessions, request)
        assert not Path(first[0]).exists() and Path(second[0]).is_file()
        session = sessions.peek("tab")
        # The session's folder holds the run (the report's source) and the latest export only.
        assert sorted(p.name for p in session.folder.iterdir()) == sorted([Path(second[0]).parent.name,
                                                                          session.run_dir.name])
    finally:
        sessions.close_all()


def test_an_abandoned_run_leaves_no_run_folder_and_the_previous_run_stays(tiny_model, tmp_path):  # noqa: F811
    from superlora.studio import export_report, train_model

    sessions, request = studio_with_a_run(tiny_model, tmp_path)
    try:
        session = sessions.peek("tab")
        kept = session.run_dir
        run = train_model(run_values(str(tiny_model), *COUNT_VALUES[:-1], 2000, 0, 0.01, 4), sessions, request)
        next(run), next(run)  # "Loading the model…", then the first progress line: the new run folder exists
        (started,) = [p for p in session.folder.glob("run-*") if p != kept]
        run.close()  # the page went away mid-run
        deadline = time.monotonic() + 60
        while started.exists():
            assert time.monotonic() < deadline, "the abandoned run's folder was not deleted"
            time.sleep(0.1)
        assert session.run_dir == kept and session.phase == "idle"
        assert Path(export_report("auto", sessions, request)).parent == kept  # the report is still the kept run's
    finally:
        sessions.close_all()


def test_the_try_it_image_of_the_page_goes_through_the_library_decoder(studio, tmp_path):  # noqa: F811
    app, url = studio
    bomb = tmp_path / "bomb.png"  # a 90-byte PNG whose header claims 60,000 x 1,000 pixels
    header = (60_000).to_bytes(4, "big") + (1_000).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b""))
    probe = tmp_path / "probe.png"
    colour_image("red", seed=1).save(probe)
    listener = page_fn_index(app, "predict_image")
    answer = page_call(url, "try-tab", listener, [upload(url, bomb), 3])
    assert not answer["success"]
    assert answer["output"]["error"].startswith("That file cannot be classified: image is 60000×1000 = "
                                                "60,000,000 pixels, over the limit of 50,000,000")
    answer = page_call(url, "try-tab", listener, [upload(url, probe), 3])
    assert answer["output"]["error"].startswith("Train a model first")  # decoded fine; nothing trained yet


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


# ------------------------------------------------------------------------------------------------ model files
def test_an_uploaded_checkpoint_is_checked_counted_and_deleted_with_its_session(
        studio, tiny_model, tmp_path):  # noqa: F811
    app, url = studio
    client = Client(url, verbose=False)
    weights = handle_file(tiny_model / "model.safetensors")
    with pytest.raises(AppError, match=r"does not fit the architecture 'superlora_hybrid_vit'"):
        client.predict(weights, "superlora-default", api_name="/upload_checkpoint")
    pickled = tmp_path / "weights.pth"
    torch.save({"model": object}, pickled)
    with pytest.raises(AppError, match=r"could not be read as plain tensors.*refused for safety"):
        client.predict(handle_file(pickled), str(tiny_model), api_name="/upload_checkpoint")

    choice, note = client.predict(weights, str(tiny_model), api_name="/upload_checkpoint")
    assert choice == "uploaded checkpoint" and note == "Using your file **model.safetensors** (tiny)."
    uploaded = client.predict(model_name="uploaded checkpoint", api_name="/count_parameters")
    assert uploaded == client.predict(model_name=str(tiny_model), api_name="/count_parameters")

    session = app.sessions.peek(client.session_hash)
    files = list(session.folder.rglob("*.safetensors"))
    assert len(files) == 1
    client.close()  # the heartbeat ends: Gradio calls the app's unload, which deletes the session's folder
    deadline = time.monotonic() + 30
    while session.folder.exists() or app.sessions.peek(client.session_hash) is not None:
        assert time.monotonic() < deadline, "the closed session's folder was not deleted"
        time.sleep(0.2)
    assert session.closed


# ------------------------------------------------------------------------------------------------ settings
def test_settings_save_and_load_round_trip_and_bad_files_are_refused(client, tiny_model, tmp_path):  # noqa: F811
    path = client.predict(model_name=str(tiny_model), preset_name="lora", rank=12, groups=0, grouping="layer",
                          fold="native", order=2, factoring="lora", targets=["q", "k", "v"], steps=40,
                          api_name="/save_config")
    saved = json.loads(Path(path).read_text())
    assert saved["studio_config_version"] == 1
    assert {k: saved[k] for k in ("preset_name", "rank", "groups", "targets", "steps")} == \
        {"preset_name": "lora", "rank": 12, "groups": 0, "targets": ["q", "k", "v"], "steps": 40}
    values = client.predict(handle_file(path), api_name="/load_config")
    assert values[:3] == (str(tiny_model), "lora", 12) and values[13] == ["q", "k", "v"]

    for content, message in (({**saved, "rank": 1000}, r"^Settings file: rank=1000 must be a number from 1 to 64"),
                             ({**saved, "colour": "red"}, r"^Unknown settings in the file: colour"),
                             ({"rank": 4}, r"^That file is not a settings file saved by this studio"),
                             ("{not json", r"^That file is not a studio settings file \(JSON\)")):
        bad = tmp_path / "bad.json"
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(bad), api_name="/load_config")
    keeps_serving(client)


# ------------------------------------------------------------------------------------------------ python app.py
def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (from /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":
                found.add(address)
    return found


def test_app_py_starts_offline_on_localhost_and_bounds_the_training_queue(tiny_model, tmp_path):  # noqa: F811
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(tiny_model), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        line = ""
        while "SuperLoRA studio on" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, "app.py exited before serving"
            assert time.monotonic() - started < 90, "app.py did not start within 90 s"
        ready = time.monotonic() - started
        print(f"\napp.py ready in {ready:.1f} s (target < 15 s on an idle machine): {line.strip()}")
        assert line.startswith(f"SuperLoRA studio on http://127.0.0.1:{port}")
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0

        # Default --max-training-jobs 1: a second session's run waits until the first one ends.
        url = f"http://127.0.0.1:{port}/"
        first, second = Client(url, verbose=False), Client(url, verbose=False)
        for client in (first, second):
            load_colours(client, tmp_path / "images", ("red", "green"), per_class=6)
        long_run = first.submit(steps=2000, batch_size=4, api_name="/train")
        while not any("step" in str(output[0]) for output in long_run.outputs()):
            assert not long_run.done(), long_run.outputs()
            time.sleep(0.2)
        short_run = second.submit(steps=3, batch_size=4, api_name="/train")
        time.sleep(2)
        assert short_run.status().code == Status.IN_QUEUE and not short_run.done()
        first.predict(api_name="/stop")
        assert long_run.result(timeout=60)[0].startswith("**Stopped**")
        assert short_run.result(timeout=120)[0].startswith("**Done** after 3 steps")
        first.close()
        second.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_app_py_limit_flags_are_the_studio_limits_and_bad_values_are_refused():
    sys.path.insert(0, str(ROOT))
    try:
        import app
    finally:
        sys.path.remove(str(ROOT))
    from superlora.studio import StudioLimits

    defaults = {flag[2:].replace("-", "_"): default for flag, default, _ in app.LIMIT_FLAGS}
    assert defaults == dataclasses.asdict(StudioLimits())
    args = app.parse_args(["--max-steps", "50", "--session-idle-minutes", "2.5"])
    assert (args.max_steps, args.session_idle_minutes, args.memory_mb) == (50, 2.5, 4096)
    for argv, message in ((["--max-queued-jobs", "0"], "--max-queued-jobs must be positive"),
                          (["--session-memory-mb", "5000"], "--session-memory-mb cannot be larger than --memory-mb")):
        done = subprocess.run([sys.executable, str(ROOT / "app.py"), *argv], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and message in done.stderr


def test_max_classes_bounds_an_uploaded_checkpoint_and_is_an_app_py_flag(tiny_model):  # noqa: F811
    from types import SimpleNamespace

    from superlora.errors import CheckpointError
    from superlora.base_models import MAX_CLASSES
    from superlora.studio import SessionStore, StudioLimits, upload_checkpoint

    sys.path.insert(0, str(ROOT))
    try:
        import app
    finally:
        sys.path.remove(str(ROOT))
    assert StudioLimits().max_classes == MAX_CLASSES and app.parse_args(["--max-classes", "3"]).max_classes == 3
    weights, request = str(tiny_model / "model.safetensors"), SimpleNamespace(session_hash="tab")
    strict = SessionStore(StudioLimits(max_classes=3), extra_models=(str(tiny_model),))
    try:
        with pytest.raises(CheckpointError, match=r"declares 4 classes; at most 3 are accepted .*--max-classes N"):
            upload_checkpoint(weights, str(tiny_model), strict, request)
        assert strict.peek("tab").checkpoint is None and not list(strict.peek("tab").folder.iterdir())
    finally:
        strict.close_all()
    lenient = SessionStore(StudioLimits(max_classes=4), extra_models=(str(tiny_model),))
    try:
        assert upload_checkpoint(weights, str(tiny_model), lenient, request)[0] == "uploaded checkpoint"
    finally:
        lenient.close_all()


def test_app_py_explains_its_flags_and_refuses_bad_values():
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    for flag in ("--host", "--port", "--share", "--max-training-jobs", "--max-upload-mb", "--model"):
        assert flag in done.stdout
    assert "default 127.0.0.1" in done.stdout and "off by default" in done.stdout
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--max-training-jobs", "0"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--max-training-jobs must be at least 1" in done.stderr
