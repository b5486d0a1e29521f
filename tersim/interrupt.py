"""Ctrl-C during the start-up imports: held, then raised as KeyboardInterrupt once they are done.

An interrupt raised asynchronously inside an import is not always an exception tersim can catch: inside torch's
C++ start-up (pybind11) it becomes a C++ exception nothing catches and the process aborts (exit -6); inside a
weakref callback of the import system or a C extension's initialisation it is printed as "ignored" or lost, and
the run goes on. Held until the imports end, it is raised from plain Python code, where it always arrives.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_pressed: list[int] = []


def _remember(signum: int, frame: object) -> None:
    _pressed.append(signum)


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C inside the block, raise KeyboardInterrupt at its end if it was pressed. Only where Ctrl-C
    raises KeyboardInterrupt in the main thread: a caller that ignores it (nohup, a background job) or handles
    it itself keeps its handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _pressed.clear()
    signal.signal(signal.SIGINT, _remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if _pressed:
            _pressed.clear()
            raise KeyboardInterrupt
