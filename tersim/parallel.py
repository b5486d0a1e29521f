"""Where independent work items run: serially, on local processes, or on a dask.distributed cluster.

    for index, result in spread(fn, items, shared, jobs=2):   # fn(*shared, item), results as they finish

`shared` (the lowered graph, the data source...) travels to each process or dask worker once; the items
are small. Sweeps spread points, `run` spreads shards of the dataset.
"""
from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence

from tersim.errors import TersimError, one_line
from tersim.report.optional import require

_SHARED: dict = {}


def _init_worker(shared: tuple) -> None:
    """Process-pool initializer: the shared objects arrive once per process; Ctrl-C is the parent's job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SHARED["args"] = shared


def _pool_call(fn: Callable, index: int, item: object) -> tuple[int, object]:
    return index, fn(*_SHARED["args"], item)


def _indexed(fn: Callable, index: int, *args: object) -> tuple[int, object]:
    return index, fn(*args)


def spread(fn: Callable, items: Sequence, shared: tuple = (), *, jobs: int | None = None,
           workers: int | None = None, dask: object = None) -> Iterator[tuple[int, object]]:
    """(index, fn(*shared, items[index])) for every item, in completion order.

    jobs: local worker processes (spawned); workers: a dask LocalCluster of that many; dask: a
    distributed.Client or a scheduler address. None of them: serial, in this process.
    """
    if dask is not None or workers:
        yield from _dask(fn, items, shared, dask, workers)
    elif jobs and jobs > 1 and len(items) > 1:
        yield from _processes(fn, items, shared, jobs)
    else:
        for index, item in enumerate(items):
            yield index, fn(*shared, item)


def _processes(fn: Callable, items: Sequence, shared: tuple, jobs: int) -> Iterator[tuple[int, object]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child inherits torch's/numba's thread pools mid-state and can deadlock
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(shared,))
    try:
        for future in as_completed([pool.submit(_pool_call, fn, i, item) for i, item in enumerate(items)]):
            yield future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _dask(fn: Callable, items: Sequence, shared: tuple, dask: object,
          workers: int | None) -> Iterator[tuple[int, object]]:
    """On a dask.distributed cluster: `dask` is a Client or a scheduler address; else a LocalCluster of `workers`."""
    distributed = require("distributed", extra="dask")
    Client, LocalCluster, as_completed = distributed.Client, distributed.LocalCluster, distributed.as_completed
    owned = []
    if isinstance(dask, Client):
        client = dask
    else:
        if dask is None:
            owned.append(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None))
        try:
            client = Client(dask if dask is not None else owned[0], timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            raise TersimError(f"dask={dask!r} (--dask): cannot reach the scheduler: {one_line(exc)}") from None
        owned.insert(0, client)
    futures = []
    try:
        shared_f = [client.scatter(obj, broadcast=True) if obj is not None else None for obj in shared]
        futures = [client.submit(_indexed, fn, i, *shared_f, item, pure=False) for i, item in enumerate(items)]
        for future in as_completed(futures):
            yield future.result()
    finally:
        if futures:
            client.cancel(futures)
        for obj in owned:
            obj.close()
