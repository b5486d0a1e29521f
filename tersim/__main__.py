"""`python -m tersim`: Ctrl-C at any moment, even while torch is still importing, is one line and exit 130 (pressed
during the start-up imports, it takes effect when they end: tersim.interrupt).

Why os._exit on 130: when Ctrl-C lands while C++ code runs Python through `PyRun_String` (pybind11 does during
some imports), CPython marks the KeyboardInterrupt "unhandled" even though tersim catches it, and at exit kills
itself with SIGINT (exit status -2) instead of returning 130. Everything is written and flushed by then.
"""
import os
import sys

from tersim.interrupt import ctrl_c_held

try:
    with ctrl_c_held():  # an interrupt raised inside an import can be lost (tersim.interrupt)
        from tersim.cli import main
    code = main()
except KeyboardInterrupt:
    print("tersim: interrupted", file=sys.stderr)
    code = 130
if code == 130:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
sys.exit(code)
