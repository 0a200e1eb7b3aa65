"""The Try it tab's handlers: classify an uploaded image, or one of the validation images, with the trained model.

Every image goes through the library's decoder and its checks (`superlora.data.decode_image`), whether it was
uploaded on the page or sent to `/predict`; Gradio only stores the file.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from superlora.data import decode_image
from superlora.data.decode import ImageRejected
from superlora.studio.sessions import SessionStore, StudioError
from superlora.studio.train_tab import trained


def _open_image(image: Any, max_side: int | None = None) -> Image.Image:
    """A Try-it image through the library's decoder and its checks: a file path, or the page's unprocessed
    upload (a dict whose "path" Gradio has checked lies in its upload folder)."""
    path = image.get("path") if isinstance(image, dict) else image
    if not path:
        raise StudioError("Upload an image to classify, or pick one of the validation images.")
    try:
        return decode_image(path, max_side=max_side)
    except ImageRejected as err:
        raise StudioError(f"That file cannot be classified: {err.reason}.") from err
    except OSError as err:
        raise StudioError(f"That file cannot be read ({err.strerror or err}).") from err


def predict_image(image: Any, top_k: float, sessions: SessionStore, request: gr.Request | None
                  ) -> dict[str, float]:
    """Top-k classes with probabilities for one image (a file path, the page's upload, or a PIL image)."""
    from superlora.base_models import data_config
    from superlora.inference import predict

    session = sessions.get(request)
    if image is None:
        raise StudioError("Upload an image to classify, or pick one of the validation images.")
    picture = image if isinstance(image, Image.Image) else _open_image(image, sessions.limits.image_side)
    result = trained(session)
    (ranked,) = predict(result.model, [picture], data_config(result.model), result.classes, top_k=int(top_k))
    return dict(ranked)


def pick_validation_image(top_k: float, sessions: SessionStore, request: gr.Request | None,
                          selected: gr.SelectData) -> tuple[Any, dict[str, float]]:
    """A validation image picked in the gallery: show it and classify it."""
    session = sessions.get(request)
    if session.val_set is None:
        raise StudioError("Load data first (Data tab).")
    image = session.val_set.images[session.picks[selected.index]]  # the gallery lists the session's picks
    return image, predict_image(image, top_k, sessions, request)
