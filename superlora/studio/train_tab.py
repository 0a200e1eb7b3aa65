"""The Train tab's handlers: queue a run, train in a worker thread while streaming its progress, stop it, and
show the kept adapter's validation results (read back from the run folder).

A run passes Gradio's queue (`concurrency_id="training"`): `check_training` refuses it before it joins when the
queue is full or it would take too many steps, `queue_training` / `mark_queued` give it a stop signal while it
waits, and `train_model` runs `superlora.train.train` (or, with "pick the learning rate" ticked,
`superlora.train.train_at_picked_lr`: short probe runs first) into a new run folder in the session's folder. A
finished or stopped run replaces the previous one; a failed or abandoned one leaves nothing behind.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from superlora import viz
from superlora.base_models import DEFAULT_MODEL, HUB_MODELS, MAX_CLASSES
from superlora.config import HEAD_ONLY, SuperLoRAConfig
from superlora.controls import ADDED_LATER, AUTO_GOOD_CLASS, TRAINING_NAMES, VIT_TARGETS, config_from_values
from superlora.defaults import DEFAULT_HEAD_LR, LR_CANDIDATES, PROBE_FRACTION
from superlora.errors import CheckpointError, ConfigError, SuperLoRAError
from superlora.report import validation_view
from superlora.runs import CONFIG_FILE, read_json
from superlora.studio.data_tab import SPLIT_SEED, VAL_FRACTION
from superlora.studio.endpoints import notes_text, sentence, unexpected
from superlora.studio.model_tab import CONTROL_NAMES, UPLOADED, training_base_model
from superlora.studio.sessions import Session, SessionStore, StudioError, StudioLimits

MAX_SHOWN_MISTAKES = 100  # mistakes in the Train tab's gallery; the report and predictions.csv list them all


def _progress_text(event: Any, best_accuracy: float | None, probe: dict[str, Any] | None = None) -> str:
    """A progress bar, then one line: step, loss, time left and the best validation accuracy so far (for an event
    of a probe run of the lr pick, `probe_of(event)`: which probe, its step and loss)."""
    share = 100 * event.step / event.total_steps if event.total_steps else 0
    bar = f'<div class="train-bar"><div style="width: {share:.1f}%"></div></div>\n\n'
    if probe is not None:
        loss = f" · loss {event.metrics['loss']:.3f}" if event.kind == "step" and "loss" in event.metrics else ""
        return bar + (f"Picking the learning rate: short run {probe['index']} of {probe['of']} at lr "
                      f"{probe['lr']:g} · step {event.step}/{event.total_steps}{loss}")
    return bar + _progress_line(event, best_accuracy)


def _progress_line(event: Any, best_accuracy: float | None) -> str:
    if event.kind == "start":
        return event.message[:1].upper() + event.message[1:] + "…"
    parts = [f"step {event.step}/{event.total_steps}"]
    if "loss" in event.metrics and event.kind == "step":
        parts.append(f"loss {event.metrics['loss']:.3f}")
    if event.eta_s is not None and event.kind == "step":
        parts.append(f"about {event.eta_s:.0f} s left")
    if best_accuracy is not None:
        parts.append(f"best validation accuracy so far {100 * best_accuracy:.1f} %")
    else:
        parts.append("validation after each epoch")
    return " · ".join(parts)


def _run_steps(train_size: int | None, steps: float, epochs: float, batch_size: float, pick_lr: bool = False
               ) -> int | None:
    """The optimizer steps a run of these settings takes, the lr pick's probe runs included (None while no data
    is loaded and epochs are asked)."""
    from superlora.train.sampling import steps_per_epoch

    if not epochs:
        run = int(steps)
    elif train_size is None or int(batch_size) < 1:
        return None
    else:
        run = int(epochs) * steps_per_epoch(train_size, int(batch_size))
    return run + (len(LR_CANDIDATES) * max(1, round(PROBE_FRACTION * run)) if pick_lr else 0)


def _too_many_steps(train_size: int | None, limits: StudioLimits, steps: float, epochs: float, batch_size: float,
                    pick_lr: bool = False) -> str | None:
    run_steps = _run_steps(train_size, steps, epochs, batch_size, pick_lr)
    if run_steps is not None and run_steps > limits.max_steps:
        picking = ", the short runs that pick the learning rate included" if pick_lr else ""
        return (f"This run would take {run_steps:,} steps{picking}, over the limit of {limits.max_steps:,} per run "
                "(--max-steps); choose fewer steps or epochs.")
    return None


def _train_size(session: Session | None) -> int | None:
    return len(session.train_set) if session is not None and session.train_set is not None else None


def training_refusal(session: Session | None, sessions: SessionStore, steps: float, epochs: float,
                     batch_size: float, pick_lr: bool = False) -> str | None:
    """Why a new training run may not join the queue (too many steps, or the queue is full), or None."""
    limits = sessions.limits
    too_many = _too_many_steps(_train_size(session), limits, steps, epochs, batch_size, pick_lr is True)
    if too_many:
        return too_many
    waiting = sessions.waiting_jobs()
    if waiting >= limits.max_queued_jobs:
        return (f"The training queue is full: {waiting} runs are waiting for a slot (at most "
                f"{limits.max_queued_jobs}, --max-queued-jobs). Try again when one has finished.")
    return None


def mark_queued(sessions: SessionStore, request: gr.Request | None) -> Any:
    """Before a training job enters the queue: a fresh stop signal (Stop works while it waits) and a busy button."""
    from superlora.train import StopSignal

    session = sessions.get(request)
    if session.phase == "idle":
        session.stop, session.phase = StopSignal(), "queued"
    return gr.update(interactive=False, value="Training…")


# The inputs of `/train`, in order: the model and adapter controls, then the training controls, then the adapter
# controls added since (so that every earlier input keeps its position).
TRAIN_INPUT_NAMES = (*(n for n in CONTROL_NAMES if n not in ADDED_LATER), *TRAINING_NAMES, *ADDED_LATER)


def queue_training(steps: float, epochs: float, batch_size: float, pick_lr: bool, sessions: SessionStore,
                   request: gr.Request | None) -> Any:
    """The Start button's first step: refuse a run that may not join the queue (a message; the button stays as
    it is), else `mark_queued`."""
    session = sessions.get(request)
    refusal = training_refusal(session, sessions, steps, epochs, batch_size, pick_lr) \
        if session.phase == "idle" else None
    if refusal:
        raise StudioError(refusal)
    return mark_queued(sessions, request)


def check_training(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> list[Any]:
    """Gradio's validator of `/train` (its inputs are TRAIN_INPUT_NAMES), run on every route before the job joins
    the queue: a refusal is shown on the Steps control (the page) or raised as a ValidationError (gradio_client).
    A /call/ request has no session hash yet at this point (Gradio gives it one after validation), and no data."""
    session_hash = getattr(request, "session_hash", None)
    session = sessions.peek(session_hash) if session_hash else None
    refusal = training_refusal(session, sessions, values["steps"], values["epochs"], values["batch_size"],
                               values.get("pick_lr") is True)
    checks = [gr.validate(True, "")] * len(TRAIN_INPUT_NAMES)
    checks[TRAIN_INPUT_NAMES.index("steps")] = gr.validate(refusal is None, refusal or "")
    return checks


def mark_done(sessions: SessionStore, request: gr.Request | None) -> Any:
    session = sessions.get(request)
    if session.phase == "queued":  # the job failed before it started
        session.phase = "idle"
    return gr.update(interactive=True, value="Start training")


def train_model(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> Iterator[tuple]:
    """Train in a worker thread and stream (status, curves, per-class accuracy, confusion matrix). The status
    carries its own progress bar (Gradio's overlay would hide the line under it). The run is written to a new run
    folder in the session's folder; `good_class` ("auto": the library's pick) counts missed defects and false
    alarms. The mistakes and the per-class table of the run come from `/validation`. (In Python, `values` maps
    TRAIN_INPUT_NAMES to the controls' values; a missing good_class is "auto", a missing pick_lr False.)"""
    from superlora.train import StopSignal, train, train_at_picked_lr

    session = sessions.get(request)
    if session.phase == "training":
        raise StudioError("This session is already training; press Stop or wait for it to finish.")
    if session.phase != "queued":  # called through the API, without the button's queued step
        session.stop = StopSignal()
    try:
        if session.stop.requested:
            yield "Stopped before training started.", gr.update(), gr.update(), gr.update()
            return
        if session.train_set is None:
            raise StudioError("Load data first: upload images or press 'Use sample data' on the Data tab.")
        picking = values.get("pick_lr") is True  # a client's "false" (a string) does not pick
        too_many = _too_many_steps(_train_size(session), sessions.limits, values["steps"], values["epochs"],
                                   values["batch_size"], picking)
        if too_many:
            raise StudioError(too_many)
        config = config_from_values(values, VIT_TARGETS)
        options = _train_options(values, session.workdir / f"run-{uuid.uuid4().hex[:8]}")
        session.phase, session.events = "training", []
        run = _picking(train_at_picked_lr) if picking else train
        yield from _run_training(session, values["model_name"], config, options, run, sessions.limits.max_classes)
    finally:
        session.phase, session.last_used = "idle", time.monotonic()


def lr_interactivity(preset_name: str, pick_lr: bool) -> tuple[Any, Any]:
    """(the adapter lr box, the pick box): the lr box greyed out while short runs pick the lr and for head-only
    (no adapter lr); the pick box greyed out and cleared for head-only."""
    head_only = preset_name == HEAD_ONLY
    pick = gr.update(interactive=False, value=False) if head_only else gr.update(interactive=True)
    return gr.update(interactive=not head_only and not pick_lr), pick


def _picking(train_at_picked_lr: Callable) -> Callable:
    """A `train` that picks the lr first: the run's result, or None when stopped while probing."""
    def run(*args: Any, **kwargs: Any) -> Any:
        return train_at_picked_lr(*args, **kwargs)[0]
    return run


def _train_options(values: dict[str, Any], output_dir: Path) -> Any:
    """The TrainOptions of the training controls: epochs when set (not 0), else steps; a missing head lr (a caller
    of the handler from before the control existed) is the default."""
    from superlora.train import TrainOptions

    epochs, head_lr = values["epochs"], values.get("head_lr")
    return TrainOptions(epochs=int(epochs) if epochs else None, steps=None if epochs else int(values["steps"]),
                        lr=float(values["lr"]), head_lr=DEFAULT_HEAD_LR if head_lr is None else float(head_lr),
                        batch_size=int(values["batch_size"]),
                        good_class=good_class_option(values.get("good_class")), output_dir=str(output_dir))


def good_class_option(good_class: str | None) -> str | None:
    """TrainOptions.good_class of the Good-class control: None (the library's pick) for "auto" or nothing."""
    return None if not good_class or good_class == AUTO_GOOD_CLASS else str(good_class)


def _run_info(session: Session) -> dict[str, Any]:
    """What the run folder's config.json records about the data, so that the report can describe it (only a
    sample can be loaded again: uploads are deleted once decoded)."""
    data: dict[str, Any] = {"val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED, "studio_source": session.data_source}
    if session.data_sample:
        data["source"] = f"sample:{session.data_sample}"  # the form `superlora train --data` reads
    return {"data": data}


def _discard_run(session: Session, run_dir: Path, worker: threading.Thread | None = None) -> None:
    """Delete a run folder that did not become the session's run (failed, or abandoned), once its writer ended."""
    if worker is not None:
        worker.join()
    if session.closed:  # closed while training: the run may have written after the folder was deleted
        shutil.rmtree(session.folder, ignore_errors=True)
    elif session.run_dir != run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


def _keep_run(session: Session, result: Any, model_name: str) -> None:
    """A finished run becomes the session's: its result and run folder replace the previous ones."""
    previous = session.run_dir
    session.result, session.run_dir = result, result.run_dir
    if previous is not None and previous != result.run_dir:
        shutil.rmtree(previous, ignore_errors=True)
    session.trained_model_source = model_name if model_name != UPLOADED else \
        f"{session.checkpoint.name} ({Path(session.checkpoint_arch).name})"


def _run_training(session: Session, model_name: str, config: SuperLoRAConfig, options: Any, train: Callable,
                  max_classes: int = MAX_CLASSES) -> Iterator[tuple]:
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    stop = session.stop
    run_dir = Path(options.output_dir)

    def work() -> None:
        try:
            source = training_base_model(model_name, session, max_classes)
            outcome["result"] = train(source, session.train_set, session.val_set, config, options,
                                      callbacks=[events.put], stop=stop, run_info=_run_info(session))
        except Exception as err:  # noqa: BLE001 - handed to the request thread, which shows it
            outcome["error"] = err
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name="studio-train", daemon=True)
    worker.start()
    try:
        yield from _stream_progress(session, events)
    except BaseException:  # the request was abandoned (tab closed): do not leave a run or its files behind
        if worker.is_alive():
            stop.request()
            threading.Thread(target=_discard_run, args=(session, run_dir, worker), daemon=True).start()
        raise
    worker.join()
    try:
        if "error" in outcome:
            error = outcome["error"]
            shown = _training_error(error, model_name)
            if shown is error:
                raise error
            raise shown from error
        if outcome["result"] is None:  # stopped while the probes picked the lr: nothing was trained
            kept = " (tabs 4 to 6 still use the previous run)" if session.result is not None else ""
            yield f"**Stopped** while picking the learning rate; nothing was trained{kept}.", None, [], None
            return
        _keep_run(session, outcome["result"], model_name)
    finally:
        _discard_run(session, run_dir)
    yield _result_outputs(session)


def _stream_progress(session: Session, events: queue.Queue) -> Iterator[tuple]:
    """(status, curves, unchanged, unchanged) while the run's events arrive, until the worker's None."""
    from superlora.train import probe_of

    last_draw, best_accuracy = 0.0, None
    # Clear the previous run's results at once; the model loads before the first event arrives.
    yield '<div class="train-bar"><div style="width: 0%"></div></div>\n\nLoading the model…', None, [], None
    while (event := events.get()) is not None:
        probe = probe_of(event)
        if probe is None:  # the curves are the run's own
            session.events.append(event)
            best_accuracy = event.metrics.get("best_accuracy", best_accuracy)
        # Redraw at most twice a second: the page stays responsive and the socket quiet.
        if time.monotonic() - last_draw > 0.5 or event.kind in ("start", "eval", "done", "stopped"):
            last_draw = time.monotonic()
            curves = gr.update() if probe is not None else viz.curves_figure(session.events)
            yield _progress_text(event, best_accuracy, probe), curves, gr.update(), gr.update()


def _training_error(error: Exception, model_name: str) -> Exception:
    """The exception to show for a run that failed: a missing hub model says what to do in the studio."""
    if isinstance(error, CheckpointError) and model_name in HUB_MODELS:
        return StudioError(_missing_weights_message(error))
    if isinstance(error, (SuperLoRAError, gr.Error)):
        return error
    return unexpected(error)


def _missing_weights_message(error: CheckpointError) -> str:
    """The library's reason (its advice is for Python users), then what to do in the studio."""
    reason = str(error).split(". Offline", 1)[0]
    return (f"{reason}. In the studio: pick {DEFAULT_MODEL} or a local folder in the model list, or upload the "
            "weights file under '…or upload your own model file' (Model & adapter tab).")


def _result_outputs(session: Session) -> tuple:
    result = session.result
    accuracy = "n/a (no validation run)" if result.best_accuracy is None else f"{100 * result.best_accuracy:.1f} %"
    ending = "Stopped" if result.stopped else "Done"
    loss = result.metrics.get("loss")
    details = f" · validation loss {loss:.3f}" if loss is not None else ""
    best = f" (the adapter of step {result.best_step} is kept)" if result.best_step is not None else ""
    status = (f"**{ending}** after {result.steps} steps · best validation accuracy **{accuracy}**{details}{best}."
              f"{_pick_note(session.run_dir)} Next: look at ΔW (tab 4) or try an image (tab 5).")
    per_class = [[name, "n/a" if acc is None else f"{100 * acc:.1f} %"]
                 for name, acc in result.per_class_accuracy.items()]
    confusion = viz.confusion_figure(result.confusion, result.classes) if result.confusion else None
    return status, viz.curves_figure(session.events), per_class, confusion


def _pick_note(run_dir: Path | None) -> str:
    """For a run whose lr short probe runs picked (its config.json's "lr_pick"): the lr and each probe's loss."""
    try:
        pick = read_json(run_dir / CONFIG_FILE).get("lr_pick") if run_dir is not None else None
    except ConfigError:
        return ""
    if not isinstance(pick, dict) or not pick.get("probes"):
        return ""
    tried = ", ".join(f"{p['lr']:g}: " + ("diverged" if p.get("diverged") else f"loss {p['loss']:.3f}")
                      for p in pick["probes"])
    return f" Adapter learning rate **{pick['lr']:g}**, picked by short runs ({tried}; the lowest loss wins)."


def stop_training(sessions: SessionStore, request: gr.Request | None) -> str:
    """Ask this session's queued or running training job to stop (within one step; the result is kept)."""
    session = sessions.get(request)
    if session.stop is not None and session.phase in ("queued", "training"):
        session.stop.request()
        reply = "Stopping after the current step…"
    else:
        reply = "Nothing is training."
    # A toast, not the status line: this reply may arrive after the run's last status and must not replace it.
    gr.Info(reply, duration=4)
    return reply


def finished_run(session: Session) -> Path:
    if session.result is None or session.run_dir is None or not session.run_dir.is_dir():
        raise StudioError("Train a model first (Train tab): the mistakes, the per-class table and the report are "
                          "made from the run's saved files.")
    return session.run_dir


def show_validation(good_class: str | None, sessions: SessionStore, request: gr.Request | None
                    ) -> tuple[list[tuple[Any, str]], list[list[Any]], str]:
    """The last run's validation results, read from its run folder: the mistakes as (image, caption) pairs, most
    confident first (at most MAX_SHOWN_MISTAKES); the per-class precision / recall / F1 table with support, TP,
    FP and FN; and the missed-defect / false-alarm sentence. `good_class` recounts the last two numbers with
    another good class ("auto" or empty: the one the run used)."""
    session = sessions.get(request)
    run_dir = finished_run(session)
    view = validation_view(run_dir, session.val_set.images if session.val_set is not None else None,
                           good_class=good_class_option(good_class))
    if view is None:
        return [], [], "No validation results: the run stopped before its first evaluation."
    count, total = view.record.get("mistake_count", len(view.mistakes)), view.record.get("count", 0)
    lines = [f"**{count} of {total} validation images misclassified.** {sentence(view.quality)}"]
    if len(view.mistakes) > MAX_SHOWN_MISTAKES:
        lines.append(f"The {MAX_SHOWN_MISTAKES} most confident mistakes are shown; the report (Export tab) has "
                     "up to 100 and lists the rest by name.")
    lines += [sentence(note) for note in view.notes]
    return view.mistakes[:MAX_SHOWN_MISTAKES], view.class_rows, notes_text(lines)


def recount_validation(good_class: str | None, sessions: SessionStore, request: gr.Request | None) -> tuple:
    """The Good-class control changed: show the last run's results with it (nothing changes before a run)."""
    session = sessions.get(request)
    if session.result is None or session.run_dir is None or session.phase != "idle":
        return gr.update(), gr.update(), gr.update()
    return show_validation(good_class, sessions, request)


def good_class_choices(sessions: SessionStore, request: gr.Request | None) -> Any:
    """The Good-class control's choices: "auto" and the loaded data's classes (back to "auto" on new data)."""
    session = sessions.get(request)
    classes = list(session.data.classes) if session.data is not None else []
    return gr.update(choices=good_class_items(classes), value=AUTO_GOOD_CLASS)


def good_class_items(classes: list[str]) -> list[tuple[str, str]]:
    return [("auto (the class named ok, good, pass or normal)", AUTO_GOOD_CLASS), *((name, name) for name in classes)]


def trained(session: Session) -> Any:
    """The TrainResult of the session's last finished run; before any, a message that says to train first."""
    if session.result is None:
        raise StudioError("Train a model first (Train tab).")
    return session.result
