"""The studio's sessions: what one browser tab owns, the store that creates and drops them, and its limits.

Each browser tab (or `gradio_client.Client`) is one Gradio session, identified by its session hash, and owns one
`Session` (its data, trained model and a private temporary folder). When the tab closes (Gradio's heartbeat ends)
the session's training is stopped and its folder deleted at once. Sessions without an open heartbeat (raw HTTP
callers of `/gradio_api/call/`, which get a new session per request) are dropped after
`StudioLimits.session_idle_minutes` without a call. Calls without any session are refused by `SessionStore.get`.
The store is also the app's memory account for decoded images (`SessionStore.image_budget`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from superlora.base_models import MAX_CLASSES
from superlora.data import ImageSet
from superlora.errors import ConfigError, SuperLoRAError

MIB = 1 << 20
NO_SESSION = ("This studio answers only calls that belong to a session: use gradio_client, the web page, or "
              "/gradio_api/call/<endpoint> (which opens a session per request). Direct /gradio_api/run/ calls "
              "without a session_hash are refused.")
HEARTBEAT_PATH = re.compile(r"/heartbeat/([^/]+)/?$")



class StudioError(SuperLoRAError):
    """Something a studio user did that cannot work (e.g. training before any data is loaded)."""


@dataclass(frozen=True)
class StudioLimits:
    """What one studio lets its users hold and start; each field is an `app.py` flag (see docs/studio.md)."""

    session_idle_minutes: float = 15.0  # a session with no open heartbeat and no call for this long is dropped
    image_side: int = 256  # images are kept at most this many px per side (timm's 224-px models resize to 256)
    session_memory_mb: int = 1024  # decoded images one session may hold
    memory_mb: int = 4096  # decoded images all sessions together may hold
    max_upload_files: int = 5000  # files in one upload (a zip counts as one; its members have their own limit)
    max_queued_jobs: int = 8  # training runs waiting for a slot; more are refused
    max_steps: int = 10_000  # optimizer steps of one training run (steps, or epochs x steps per epoch)
    max_classes: int = MAX_CLASSES  # the largest classifier head an uploaded weights file may declare

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not value > 0:
                raise ConfigError(f"{name}={value}: must be positive")
        if self.session_memory_mb > self.memory_mb:
            raise ConfigError(f"session_memory_mb={self.session_memory_mb} is over memory_mb={self.memory_mb}; "
                              "one session cannot hold more than all sessions together")


@dataclass
class Session:
    """Everything one browser session owns. Its folder is created on first use and deleted by `close`."""

    folder: Path
    checkpoint: Path | None = None  # an uploaded base model file
    checkpoint_arch: str = ""  # its architecture: a model name, or a local model folder of the same shapes
    data: ImageSet | None = None
    data_source: str = ""
    data_sample: str = ""  # the bundled sample's name when `data` is one
    train_set: ImageSet | None = None
    val_set: ImageSet | None = None
    result: Any = None  # TrainResult of the last finished run
    trained_model_source: str = ""
    events: list[Any] = field(default_factory=list)
    stop: Any = None  # StopSignal of the queued or running training job
    phase: str = "idle"  # "idle", "queued" (waiting for a training slot) or "training"
    controls_version: int = 0  # counts control changes, so figures of settings already changed are skipped
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    data_bytes: int = 0  # pixel memory of `data` (its train/validation halves share its images)
    export_dir: Path | None = None  # the latest export; a new one replaces it
    picks: list[int] = field(default_factory=list)  # the validation images offered in Try it (indices of val_set)
    run_dir: Path | None = None  # the run folder of `result`; a new run replaces it

    @property
    def workdir(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def close(self) -> None:
        self.closed = True
        if self.stop is not None:
            self.stop.request()
        self.data = self.train_set = self.val_set = self.result = self.run_dir = None
        self.picks = []
        self.data_bytes = 0
        shutil.rmtree(self.folder, ignore_errors=True)


class SessionStore:
    """The sessions of one app, keyed by Gradio's session hash; their folders live under one temporary root.

    Also the app's memory account: `image_budget` hands a loading session the bytes it may decode, so that no
    session holds more than `limits.session_memory_mb` and all of them together no more than `limits.memory_mb`.
    """

    def __init__(self, limits: StudioLimits | None = None, extra_models: tuple[str, ...] = (),
                 idle_s: float | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="superlora-studio-"))
        self.extra_models = extra_models  # local model folders the app offers
        self.limits = limits or StudioLimits()
        self.idle_s = idle_s if idle_s is not None else 60 * self.limits.session_idle_minutes
        self.waiting_jobs: Callable[[], int] = lambda: 0  # training runs waiting for a slot (set by build_app)
        self._sessions: dict[str, Session] = {}
        self._heartbeats: collections.Counter[str] = collections.Counter()  # open heartbeat streams per hash
        self._reserved: dict[int, int] = {}  # bytes promised to loads in progress, by session id
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        atexit.register(self.close_all)

    def get(self, request: gr.Request | None) -> Session:
        """The caller's session, created on first use. `request` None is a direct Python call (tests, notebooks);
        a Gradio request without a session hash is a sessionless HTTP call and is refused."""
        key = "local" if request is None else getattr(request, "session_hash", None)
        if not key:
            raise StudioError(NO_SESSION)
        now = time.monotonic()
        with self._lock:
            self._drop_idle(now)
            session = self._sessions.get(key)
            if session is None:
                # The folder name is ours, never the client-chosen hash, so no hash can point outside the root.
                session = self._sessions[key] = Session(folder=self.root / uuid.uuid4().hex[:16])
            session.last_used = now
            return session

    def peek(self, session_hash: str) -> Session | None:
        """The session of this hash if it exists (for tests and clean-up), without creating one."""
        with self._lock:
            return self._sessions.get(session_hash)

    def end(self, request: gr.Request | None) -> None:
        """Called when a browser tab or client disconnects: stop its training, delete its files."""
        key = getattr(request, "session_hash", None)
        with self._lock:
            session = self._sessions.pop(key, None) if key else None
        if session is not None:
            session.close()

    def heartbeat(self, session_hash: str, open_: bool) -> None:
        """A page or gradio_client opened (or closed) its heartbeat stream: while one is open, never idle."""
        with self._lock:
            self._heartbeats[session_hash] += 1 if open_ else -1
            if self._heartbeats[session_hash] <= 0:
                del self._heartbeats[session_hash]

    def sweep(self) -> None:
        """Drop idle sessions now (also done on every call and by the background sweeper)."""
        with self._lock:
            self._drop_idle(time.monotonic())

    def start_sweeper(self) -> None:
        """Drop idle sessions even when no call arrives, checking a few times per idle period."""
        period = min(60.0, max(self.idle_s / 4, 0.05))

        def sweep_until_closed() -> None:
            while not self._stopped.wait(period):
                self.sweep()
        threading.Thread(target=sweep_until_closed, name="studio-session-sweeper", daemon=True).start()

    def _drop_idle(self, now: float) -> None:
        for key, session in list(self._sessions.items()):
            if now - session.last_used > self.idle_s and session.phase == "idle" and key not in self._heartbeats:
                self._sessions.pop(key).close()

    @contextlib.contextmanager
    def image_budget(self, session: Session) -> Iterator[int]:
        """The bytes of decoded images `session` may load now (its current images are replaced, so they do not
        count), reserved against the global budget until the load ends."""
        limits = self.limits
        with self._lock:
            others = sum(s.data_bytes for s in self._sessions.values() if s is not session)
            others += sum(b for owner, b in self._reserved.items() if owner != id(session))
            left = limits.memory_mb * MIB - others
            if left < MIB:
                raise StudioError(f"The server's memory for images ({limits.memory_mb:,} MiB for all sessions, "
                                  "--memory-mb) is in use by other sessions; try again later.")
            budget = self._reserved[id(session)] = min(limits.session_memory_mb * MIB, left)
        try:
            yield budget
        finally:
            with self._lock:
                self._reserved.pop(id(session), None)

    def connected(self) -> list[str]:
        """The session hashes with an open heartbeat stream now."""
        with self._lock:
            return list(self._heartbeats)

    def hashes(self) -> list[str]:
        """The session hashes the store holds now."""
        with self._lock:
            return list(self._sessions)

    def memory_used(self) -> int:
        """Pixel bytes of the images all sessions hold."""
        with self._lock:
            return sum(s.data_bytes for s in self._sessions.values())

    def close_all(self) -> None:
        self._stopped.set()
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._sessions)


class HeartbeatWatch:
    """ASGI middleware that tells the store which sessions hold an open heartbeat stream (a page or a
    gradio_client), so that only sessions nobody is connected to expire."""

    def __init__(self, app: Any, sessions: SessionStore):
        self.app, self.sessions = app, sessions

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        match = HEARTBEAT_PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        self.sessions.heartbeat(match.group(1), True)
        try:
            await self.app(scope, receive, send)
        finally:
            self.sessions.heartbeat(match.group(1), False)
