"""The studio driven through its named API endpoints with gradio_client, as a script or a second program would.

Every endpoint with good input (numbers checked against the library) and bad input (corrupt image, non-image
file, archive with `..`, impossible config, oversized upload): a clear message comes back as an exception and
the app keeps serving. Also: Stop stops, two sessions training at once keep their own data and models, the
training queue is bounded, a closed session's files are deleted, and `python app.py` starts offline with its
flags.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

from superlora.config import preset
from superlora.counting import count_parameters
from superlora.models import create_meta_model

from studio_helpers import (UPLOAD_LIMIT_MB, class_folder_zip, colour_image, corrupt_png, free_port,  # noqa: F401
                            prefixed_images, studio, tiny_model)

ROOT = Path(__file__).resolve().parents[1]
NAMED_ENDPOINTS = ("/preset", "/count_parameters", "/upload_checkpoint", "/use_sample", "/load_data", "/train", "/stop",
                   "/inspect", "/predict", "/export", "/save_config", "/load_config")
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


def train(client: Client, **options) -> tuple:
    settings = dict(steps=8, batch_size=8, lr=0.01, api_name="/train")
    return client.predict(**{**settings, **options})


# ------------------------------------------------------------------------------------------------ configure
def test_every_named_endpoint_is_served(client):
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(NAMED_ENDPOINTS) <= set(named)
    parameters = [p["parameter_name"] for p in named["/count_parameters"]["parameters"]]
    assert parameters[:3] == ["model_name", "preset_name", "rank"] and "targets" in parameters


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


@pytest.mark.parametrize("name", ["lora", "loha", "lokr", "lotr", "superlora-2d", "lorta", "lonkr"])
def test_each_preset_sets_the_controls_to_the_library_preset(name, tiny_model):  # noqa: F811
    from superlora.studio import config_from_controls, preset_settings

    settings = preset_settings(name)
    controls = {k: v for k, v in settings.items() if k != "preset_name"}
    config = config_from_controls(name, rank=4, alpha=0, targets=["q", "v"], **controls)
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
        outputs = list(train_model("unused", "lorta", 4, 0, 1, "contiguous", "auto", 3, 1, "tucker", "none", 1.0,
                                   False, ["q", "v"], 10, 0, 3e-3, 8, sessions=sessions, request=request))
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
