"""Start the SuperLoRA studio in the browser: `python app.py` (see `--help`).

Binds to 127.0.0.1 unless --host says otherwise; nothing is shared publicly unless --share is given. Works
offline: Gradio's usage analytics are off and model hubs are not contacted unless a hub model is trained.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# (flag, default, help): each is a field of superlora.studio.StudioLimits of the same name.
LIMIT_FLAGS = (
    ("--session-idle-minutes", 15.0, "drop a session nobody is connected to after this many minutes without a call"),
    ("--image-side", 256, "keep uploaded images at most this many pixels per side"),
    ("--session-memory-mb", 1024, "memory one session may use for its images, in MiB"),
    ("--memory-mb", 4096, "memory all sessions together may use for images, in MiB"),
    ("--max-upload-files", 5000, "files in one upload (put more into a .zip)"),
    ("--max-queued-jobs", 8, "training runs that may wait for a slot; more are refused"),
    ("--max-steps", 10_000, "optimizer steps of one training run"),
    ("--max-classes", 32_768, "classes an uploaded model file's head may declare (superlora.base_models.MAX_CLASSES)"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SuperLoRA studio: fine-tune a ViT on your images in the browser.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    parser.add_argument("--max-training-jobs", type=int, default=1,
                        help="training runs allowed at once across all users; others wait in a queue (default 1)")
    parser.add_argument("--max-upload-mb", type=int, default=200, help="largest accepted upload in MB (default 200)")
    parser.add_argument("--model", action="append", default=[], metavar="FOLDER",
                        help="offer a local model folder (config.json + model.safetensors) first; repeatable")
    limits = parser.add_argument_group("limits per user and for the whole server (docs/studio.md)")
    for flag, default, text in LIMIT_FLAGS:
        limits.add_argument(flag, type=type(default), default=default, help=f"{text} (default {default})")
    args = parser.parse_args(argv)
    if args.max_training_jobs < 1:
        parser.error("--max-training-jobs must be at least 1")
    if args.max_upload_mb < 1:
        parser.error("--max-upload-mb must be at least 1")
    for flag, _, _ in LIMIT_FLAGS:
        if not getattr(args, flag[2:].replace("-", "_")) > 0:
            parser.error(f"{flag} must be positive")
    if args.session_memory_mb > args.memory_mb:
        parser.error("--session-memory-mb cannot be larger than --memory-mb")
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    from superlora.errors import SuperLoRAError
    from superlora.studio import StudioLimits, launch

    limits = StudioLimits(**{flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                             for flag, _, _ in LIMIT_FLAGS})
    try:
        app = launch(host=args.host, port=args.port, share=args.share, max_training_jobs=args.max_training_jobs,
                     max_upload_mb=args.max_upload_mb, extra_models=tuple(args.model), prevent_thread_lock=True,
                     quiet=True, limits=limits)
    except SuperLoRAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # Gradio reports a busy port as OSError
        print(f"error: cannot serve on {args.host}:{args.port} ({err}); pick another --port", file=sys.stderr)
        return 2
    print(f"SuperLoRA studio on {app.local_url} (ready in {time.monotonic() - started:.1f} s; Ctrl+C to stop)",
          flush=True)
    if app.share_url:
        print(f"Public link (anyone with it can use this studio): {app.share_url}", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
