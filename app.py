"""Start the SuperLoRA studio in the browser: `python app.py` (see `--help`).

Binds to 127.0.0.1 unless --host says otherwise; nothing is shared publicly unless --share is given.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description="SuperLoRA studio: fine-tune a ViT on your images in the browser.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    parser.add_argument("--max-training-jobs", type=int, default=1,
                        help="training runs allowed at once across all users; others wait in a queue (default 1)")
    parser.add_argument("--max-upload-mb", type=int, default=200, help="largest accepted upload in MB (default 200)")
    parser.add_argument("--model", action="append", default=[], metavar="FOLDER",
                        help="offer a local model folder (config.json + model.safetensors) first; repeatable")
    args = parser.parse_args()

    from superlora.studio import launch

    print(f"SuperLoRA studio on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(host=args.host, port=args.port, share=args.share, max_training_jobs=args.max_training_jobs,
           max_upload_mb=args.max_upload_mb, extra_models=tuple(args.model))


if __name__ == "__main__":
    main()
