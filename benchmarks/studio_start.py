"""Offline start time of the studio: from launching `python app.py` to the page answering on 127.0.0.1.

    python benchmarks/studio_start.py [--runs 3]     # writes benchmarks/results/studio_start.md

Each run starts a fresh process with HF_HUB_OFFLINE=1 and GRADIO_ANALYTICS_ENABLED=False, polls the page until it
answers HTTP 200, then stops the process. The target (issue: the studio) is under 15 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "studio_start.md"
TARGET_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_start(timeout_s: float = 120.0) -> float:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with status {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"no answer within {timeout_s} s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times = [one_start() for _ in range(args.runs)]
    median = statistics.median(times)
    load = os.getloadavg()[0]
    text = "\n".join([
        "# Studio offline start time",
        "",
        f"Command: `python benchmarks/studio_start.py --runs {args.runs}`; date {time.strftime('%Y-%m-%d')}; "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end.",
        "",
        "From launching `python app.py` (offline) to the page answering HTTP 200 on 127.0.0.1.",
        "",
        "| run | seconds |",
        "|---|---|",
        *[f"| {i + 1} | {t:.1f} |" for i, t in enumerate(times)],
        f"| **median** | **{median:.1f}** (target < {TARGET_S:.0f} s: {'met' if median < TARGET_S else 'MISSED'}) |",
        "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
