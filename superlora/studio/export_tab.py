"""The Export tab's handlers: the trained model as downloads (adapter, merged model, ONNX) and the run report.

Each export is written to a new folder in the session's folder and replaces the previous one; folders are zipped
for download. The report is `superlora.report.write_report` on the session's run folder.
"""

from __future__ import annotations

import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from superlora.report import write_report
from superlora.studio.sessions import SessionStore, StudioError
from superlora.studio.train_tab import finished_run, good_class_option, trained

EXPORT_CHOICES = ("adapter", "merged", "onnx")


def export_model(formats: list[str], sessions: SessionStore, request: gr.Request | None) -> list[str]:
    """Write the chosen formats and return downloadable files (folders are zipped)."""
    from superlora.export import export

    session = sessions.get(request)
    result = trained(session)
    formats = list(formats or [])
    if not formats:
        raise StudioError("Tick at least one format to export.")
    folder = session.workdir / f"export-{uuid.uuid4().hex[:6]}"
    try:
        files = _export_files(export(result.model, folder, formats, classes=result.classes,
                                     metadata={"base_model": session.trained_model_source}), folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # The new export replaces the previous one (Gradio keeps its own copy of what was downloaded).
    if session.export_dir is not None:
        shutil.rmtree(session.export_dir, ignore_errors=True)
    session.export_dir = folder
    return files


def _export_files(written: dict[str, Any], folder: Path) -> list[str]:
    """The downloadable files of an export: files as they are, folders zipped into `folder`."""
    files = []
    for name, item in written.items():
        path = Path(getattr(item, "path", item))
        if path.is_dir():
            archive = folder / f"superlora-{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for member in sorted(path.rglob("*")):
                    zf.write(member, Path(f"superlora-{name}") / member.relative_to(path))
            files.append(str(archive))
        else:
            files.append(str(path))
    return files


def export_help(formats: list[str], sessions: SessionStore, request: gr.Request | None) -> str:
    """How to use what was just exported, in a few lines of Python."""
    base = sessions.get(request).trained_model_source
    lines = ["**Using the files** (unzip them first):"]
    if "adapter" in (formats or []):
        lines.append(f"- adapter: `superlora.inference.loadtrained('superlora-adapter', model={base!r})"
                     ".predict(['photo.jpg'])`; it holds only the adapter and the head, so it needs the base model.")
    if "merged" in (formats or []):
        lines.append("- merged: the base model with the update merged in, a plain checkpoint: "
                     "`superlora.base_models.load_model('superlora-merged')` (or timm, see its config.json).")
    if "onnx" in (formats or []):
        lines.append("- onnx: for onnxruntime and other runtimes; input `pixel_values` (normalised as in the model's "
                     "data config, stored in the file's metadata with the class names), output `logits`.")
    return "\n".join(lines)


def export_report(good_class: str | None, sessions: SessionStore, request: gr.Request | None) -> str:
    """The one-page HTML report of the last run (`superlora.report.write_report` on its run folder), replacing
    the previous one. `good_class` as for `/validation`."""
    session = sessions.get(request)
    run_dir = finished_run(session)
    return str(write_report(run_dir, run_dir / "superlora-report.html", good_class=good_class_option(good_class)))
