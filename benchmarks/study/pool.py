"""The resumable run loop both studies share: ask for the runs that can be decided now, run them (in this process
or in spawned worker processes), record each row as it finishes, and ask again until nothing is left."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:  # Linux: end with the parent, so that stopping the study (kill PID) leaves no worker running on
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_until_done(pending: Callable[[], tuple[int, Sequence[tuple[Any, ...]]]], run: Callable[..., dict[str, Any]],
                   record: Callable[[Any, dict[str, Any]], None], workers: int, threads: int) -> None:
    """Loop until `pending()` returns no calls. `pending()` -> (rows on file, the argument tuples of `run`, each
    starting with its job, most urgent first); `run(*arguments)` returns a job's row and `record(job, row)` stores
    it. With one worker `run` is called here with `threads=threads`, one call at a time, and `pending()` is asked
    again after each: a job that a finished run has just made possible (an lr sweep's extension, rows another
    process wrote) goes first instead of waiting behind the rest of a long list. With more workers, each batch runs
    in spawned processes of `threads` threads before `pending()` is asked again."""
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=worker_init, initargs=(threads,))
    try:
        expected = None  # with one worker: the count the last list implies now, if nothing new came up
        while True:
            on_file, calls = pending()
            if not calls:
                break
            if expected is None or len(calls) > expected:
                print(f"{on_file} runs on file, {len(calls)} to run now", flush=True)
            if pool is None:
                record(calls[0][0], run(*calls[0], threads=threads))
                expected = len(calls) - 1
            else:
                from concurrent.futures import as_completed

                futures = {pool.submit(run, *arguments): arguments[0] for arguments in calls}
                for future in as_completed(futures):
                    record(futures[future], future.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
