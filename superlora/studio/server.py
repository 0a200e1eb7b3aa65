"""Start the studio: build the page, queue it so that only calls with a session are served, and serve it."""

from __future__ import annotations

import gradio as gr
from starlette.middleware import Middleware

from superlora.studio.layout import CSS, build_app
from superlora.studio.sessions import HeartbeatWatch, StudioLimits


def launch(host: str = "127.0.0.1", port: int | None = None, share: bool = False, max_training_jobs: int = 1,
           max_upload_mb: int = 200, extra_models: tuple[str, ...] = (), prevent_thread_lock: bool = False,
           quiet: bool = False, limits: StudioLimits | None = None) -> gr.Blocks:
    """Build and start the studio. Binds to 127.0.0.1 unless told otherwise; sharing is off by default.

    Uploads larger than `max_upload_mb` are refused by the server before they reach the studio. Only calls that
    belong to a session are served: `api_open=False` makes Gradio refuse `/gradio_api/run/` for every queued
    endpoint, so training always passes the queue and its limit.
    """
    app = build_app(max_training_jobs=max_training_jobs, extra_models=extra_models, limits=limits)
    app.queue(default_concurrency_limit=4, api_open=False)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
               max_file_size=f"{max_upload_mb}mb", quiet=quiet, show_error=True, footer_links=["api"],
               ssr_mode=False, css=CSS,
               app_kwargs={"middleware": [Middleware(HeartbeatWatch, sessions=app.sessions)]})
    return app
