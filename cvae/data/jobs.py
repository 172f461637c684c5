"""Running a cohort generator's jobs (one subject each): in this process, or in a pool of worker processes that keep
the memory they free (:func:`cvae.process.keep_freed_memory`). Used by :mod:`cvae.data.synthetic` and
:mod:`cvae.data.foreign`."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from cvae.process import keep_freed_memory

__all__ = ["run_jobs"]

Job = TypeVar("Job")
Result = TypeVar("Result")


def run_jobs(function: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> Iterator[Result]:
    """``function(job)`` for every job of ``jobs``, yielding each result as its job ends: here, in order, with one
    worker or one job; else in ``min(workers, len(jobs))`` processes (:func:`keep_freed_memory` in each), in the
    order the jobs end. ``function`` must be a module-level function (the pool pickles it by name)."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield function(job)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=keep_freed_memory) as pool:
        for future in as_completed([pool.submit(function, job) for job in jobs]):
            yield future.result()
