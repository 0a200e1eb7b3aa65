"""The studies' shared run loop (benchmarks/study/pool.py): with one worker it asks for the pending runs again after
every run, so a run that a finished one has just made possible goes first instead of waiting behind a long list."""

from __future__ import annotations

from benchmarks.study.pool import run_until_done


def test_one_worker_asks_again_after_every_run_so_new_urgent_jobs_jump_the_queue(capsys):
    done: list[str] = []

    def pending():
        # "sweep-2" becomes possible only once "sweep-1" has run, and is more urgent than every "main" run.
        jobs = ["sweep-1"] if "sweep-1" not in done else (["sweep-2"] if "sweep-2" not in done else [])
        jobs += [f"main-{i}" for i in range(3) if f"main-{i}" not in done]
        return len(done), [(job,) for job in jobs]

    def run(job, threads=None):
        assert threads == 1
        return {"job": job}

    run_until_done(pending, run, lambda job, row: done.append(row["job"]), workers=1, threads=1)
    assert done == ["sweep-1", "sweep-2", "main-0", "main-1", "main-2"]  # run as one batch, sweep-2 would have come last
    # The list is announced at the start and again only when it grew beyond what the last one implied.
    assert capsys.readouterr().out.splitlines() == ["0 runs on file, 4 to run now", "1 runs on file, 4 to run now"]


def test_it_stops_at_once_when_nothing_is_pending():
    calls = []
    run_until_done(lambda: (7, []), lambda *a, **k: calls.append(a), lambda *a: None, workers=1, threads=1)
    assert calls == []
