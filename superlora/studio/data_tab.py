"""The Data tab's handlers: load a bundled sample or the user's upload, split it, and show what was loaded.

Uploads are linked into the session's folder, decoded by `superlora.data.load_dataset` within the session's
memory budget (`SessionStore.image_budget`) and deleted; only the decoded images stay, in the session.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path

import gradio as gr
from PIL import Image

from superlora.data import SAMPLES, ImageSet, MemoryBudgetExceeded, load_dataset, resolve_label_mode, \
    sample_dataset, train_val_split
from superlora.errors import SuperLoRAError
from superlora.studio.endpoints import notes_text
from superlora.studio.sessions import MIB, Session, SessionStore, StudioError, StudioLimits

THUMBNAILS_PER_CLASS = 6  # one gallery row per class
THUMBNAIL_SIDE = 96
VALIDATION_PICKS_PER_CLASS = 2
VAL_FRACTION, SPLIT_SEED = 0.2, 0  # the fixed 80/20 split of every class


def _thumbnail(image: Image.Image) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return thumb


def _blank() -> Image.Image:
    return Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (244, 244, 246))


def validation_picks(val_set: ImageSet, num_classes: int) -> list[int]:
    """The validation images offered in the Try it tab (indices into `val_set`): the first few of every class,
    class by class, in the order the gallery shows them."""
    picks = []
    for index in range(num_classes):
        members = [i for i, label in enumerate(val_set.labels) if label == index]
        picks += members[:VALIDATION_PICKS_PER_CLASS]
    return picks


def _data_outputs(session: Session) -> tuple:
    """Summary, class table, thumbnail grid (one row per class), skipped files, validation images to pick."""
    data = session.data
    counts = data.class_counts()
    train_counts = session.train_set.class_counts()
    val_counts = session.val_set.class_counts()
    table = [[name, counts[name], train_counts[name], val_counts[name]] for name in data.classes]
    gallery = []
    for index, name in enumerate(data.classes):
        members = [image for image, label in zip(data.images, data.labels) if label == index]
        row = [(_thumbnail(image), name) for image in members[:THUMBNAILS_PER_CLASS]]
        # Pad short classes so that every class keeps its own row of the grid.
        gallery += row + [(_blank(), "")] * (THUMBNAILS_PER_CLASS - len(row))
    val_set = session.val_set
    picks = [(_thumbnail(val_set.images[i]), data.classes[val_set.labels[i]]) for i in session.picks]
    rejected = [[r.name, r.reason] for r in data.rejected] or [["—", "no file was skipped"]]
    notes = [f"**{len(data.images)} images in {len(data.classes)} classes** from {session.data_source}: "
             f"{sum(train_counts.values())} for training, {sum(val_counts.values())} for validation "
             "(a fixed 80/20 split per class)."]
    notes += [f"⚠️ {warning}" for warning in dict.fromkeys(session.train_set.warnings)]
    if data.rejected:
        notes.append(f"⚠️ {len(data.rejected)} file(s) were skipped; the list below says why.")
    return notes_text(notes), table, gallery, rejected, picks


def _set_data(session: Session, data: ImageSet, source: str, sample: str = "") -> tuple:
    train_set, val_set = train_val_split(data, val_fraction=VAL_FRACTION, seed=SPLIT_SEED)
    session.data, session.data_source, session.train_set, session.val_set = data, source, train_set, val_set
    session.data_sample, session.picks = sample, validation_picks(val_set, len(data.classes))
    session.data_bytes = data.memory_bytes()
    return _data_outputs(session)


def _over_budget_message(err: MemoryBudgetExceeded, limits: StudioLimits) -> str:
    if err.budget >= limits.session_memory_mb * MIB:
        which = (f"the memory one session may use for images ({limits.session_memory_mb:,} MiB, "
                 "--session-memory-mb)")
    else:
        which = (f"the memory left for images on this server ({err.budget / MIB:,.0f} MiB of "
                 f"{limits.memory_mb:,} MiB shared by all sessions, --memory-mb)")
    return (f"Your images do not fit into {which}: the first {err.decoded:,} of {err.total:,} files already take "
            f"more. Images are kept at most {limits.image_side} px per side; upload fewer images, or ask whoever "
            "runs the studio to raise the limit.")


def use_sample(name: str, sessions: SessionStore, request: gr.Request | None) -> tuple:
    """Load one of the bundled samples."""
    session = sessions.get(request)
    if name not in SAMPLES:
        raise StudioError(f"Sample data: unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    with sessions.image_budget(session) as budget:
        data = sample_dataset(name)
        if data.memory_bytes() > budget:
            raise StudioError(_over_budget_message(MemoryBudgetExceeded(
                "", budget=budget, decoded=len(data), total=len(data)), sessions.limits))
        return _set_data(session, data, f"the sample '{name}'", sample=name)


def _checked_upload(files: list[str] | None, csv_file: str | None, labels: str, limits: StudioLimits
                    ) -> tuple[list[Path], str | None, bool, int]:
    """(the distinct data files, the label CSV, whether it is a zip, how many listed files were repeats), after
    the checks that need no copy and that `load_dataset` cannot make (it sees one source and one CSV; the labels
    option and its CSV are checked there). A file listed more than once (the same upload, so the same path) is used
    once."""
    paths = list(dict.fromkeys(Path(f) for f in (files or [])))
    repeated = len(files or []) - len(paths)
    if not paths:
        raise StudioError("Upload a .zip or some images first (or press 'Use sample data').")
    if len(paths) > limits.max_upload_files:
        raise StudioError(f"{len(paths):,} files were uploaded at once, over the limit of {limits.max_upload_files:,} "
                          "(--max-upload-files); put the images into one .zip instead.")
    csvs = [p for p in paths if p.suffix.lower() == ".csv"]
    paths = [p for p in paths if p.suffix.lower() != ".csv"]
    if csvs and csv_file:
        raise StudioError("Two label CSVs were given; keep one (either in the CSV box or among the files).")
    if len(csvs) > 1:
        raise StudioError(f"{len(csvs)} CSV files were uploaded; give one label CSV with rows path,label.")
    csv_path = csv_file or (str(csvs[0]) if csvs else None)
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if zips and len(paths) > 1:
        raise StudioError("Upload either one .zip or image files, not both (put everything into the zip).")
    if not paths:
        raise StudioError("Only a CSV was uploaded; add the images (or a .zip of them) too.")
    if not zips and labels == "folders":
        raise StudioError("Labels from folders need a .zip: a browser uploads single images without their "
                          "folders. Zip the class folders and upload the .zip, or name the files "
                          "class_xxx.png ('prefix'), or add a CSV.")
    return paths, csv_path, bool(zips), repeated


def _copy_uploads(paths: list[Path], upload_dir: Path) -> list[Path]:
    """Link (or copy) each upload into `upload_dir`, which the caller deletes; clashing names get a suffix."""
    copies = []
    for path in paths:
        destination = upload_dir / path.name
        if destination.exists():
            destination = upload_dir / f"{path.stem}-{uuid.uuid4().hex[:4]}{path.suffix}"
        try:
            os.link(path, destination)  # no second copy on disk when both sit on one file system
        except OSError:
            shutil.copyfile(path, destination)
        copies.append(destination)
    return copies


def _label_mode(labels: str, is_zip: bool, csv_path: str | None) -> str:
    """The `load_dataset` labels option of an upload. Images a browser uploads one by one arrive without their
    folders, so the library's rule is told they have none; a zip keeps its folders and is resolved on opening."""
    if is_zip:
        return labels
    return resolve_label_mode(labels, csv=bool(csv_path), class_folders=False)


def load_data(files: list[str] | None, csv_file: str | None, labels: str, sessions: SessionStore,
              request: gr.Request | None) -> tuple:
    """Load uploaded images: one .zip (labels from its folders, prefixes or a CSV), or many images (labels from
    file-name prefixes or a CSV; a browser upload keeps no folder names)."""
    session = sessions.get(request)
    paths, csv_path, is_zip, repeated = _checked_upload(files, csv_file, labels, sessions.limits)
    # Copy into the session's folder: the upload cache is Gradio's, the session folder is deleted with the session.
    upload_dir = session.workdir / f"upload-{uuid.uuid4().hex[:6]}"
    # Messages and the skipped-files list name files as the user knows them, not by their place on the server.
    hidden_prefix = f"{upload_dir}{os.sep}"
    try:
        upload_dir.mkdir(parents=True)
        copies = _copy_uploads(paths, upload_dir)
        with sessions.image_budget(session) as budget:
            options = dict(csv=csv_path, max_side=sessions.limits.image_side, max_image_bytes=budget)
            source = copies[0] if is_zip else [str(p) for p in copies]
            data = load_dataset(source, labels=_label_mode(labels, is_zip, csv_path), **options)
            notes = [f"{repeated} file(s) were listed more than once; each was used once"] if repeated else []
            data = dataclasses.replace(
                data, names=[name.replace(hidden_prefix, "") for name in data.names],
                rejected=[dataclasses.replace(r, name=r.name.replace(hidden_prefix, "")) for r in data.rejected],
                warnings=[*data.warnings, *notes])
            names = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            return _set_data(session, data, f"your upload ({names})")
    except MemoryBudgetExceeded as err:
        raise StudioError(_over_budget_message(err, sessions.limits)) from err
    except SuperLoRAError as err:
        raise type(err)(str(err).replace(hidden_prefix, "")) from err
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)  # the images are decoded into memory
