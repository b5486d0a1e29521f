"""The FP32 pass of an in-process run on a background thread (pipeline.Fp32Ahead): the same outputs and metrics
as the serial loop, bounded read-ahead, errors in their serial order, Ctrl-C not held up by the thread."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import tersim.frontend.float_exec as float_exec
import tersim.pipeline as pipeline
from tersim.cli import main
from tersim.data import open_data
from tersim.errors import DataError, TersimError
from tersim.frontend import execute_float
from tersim.options import RunOptions

from conftest import DATA, HW, MODEL, ROOT


def fp32_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tersim-fp32") and t.is_alive()]


def serial_evaluation(options: RunOptions) -> pipeline.ShardResult:
    """The loop as it ran before the FP32 pass moved to a thread: every batch's FP32 output, then its integer run."""
    p = pipeline.prepare(HW, MODEL, options)
    shard = pipeline.Shard(0, p.source.length, options.batch_size)
    return pipeline.evaluate_shard(p.graph, p.qgraph, p.source, None, shard, float_outputs=p.float_outputs)


@pytest.mark.parametrize("batch_size, limit", [(64, 200), (32, 160), (500, None)])
def test_overlapped_evaluation_equals_the_serial_one(batch_size, limit, monkeypatch):
    """Several batches (a partial last one), batches calibration already ran (32: taken from its outputs, not
    recomputed), and one batch holding the whole split: the metrics' every bit and the overflow counts agree."""
    options = RunOptions(data=DATA, batch_size=batch_size, limit=limit)
    expected = serial_evaluation(options)
    passes = []
    real = pipeline.execute_float
    monkeypatch.setattr(pipeline, "execute_float", lambda *a, **k: passes.append(threading.current_thread().name)
                        or real(*a, **k))
    got = pipeline.evaluate(HW, MODEL, options)
    assert got.metrics == expected.metrics.result()
    assert got.overflow == expected.overflow
    assert got.metrics["accuracy_quant"] >= 0.5   # a real evaluation, not an empty one
    samples = limit or 500
    batches = -(-samples // batch_size)
    reused = 4 if batch_size == 32 else 0    # calibration's 4 batches of 32 samples
    assert len(passes) == batches - reused and all(name.startswith("tersim-fp32") for name in passes)
    assert not fp32_threads()


def test_outputs_are_the_serial_pass_bit_for_bit(digits_graph):
    x = np.random.default_rng(3).standard_normal((37, *digits_graph.input_shape)).astype(np.float32)
    source = open_data((x, None), digits_graph.input_shape)
    with pipeline.Fp32Ahead(digits_graph, source, pipeline.Shard(0, 37, 8), None) as ahead:
        got = [(xb, yb, ref()) for xb, yb, ref in ahead]
    assert [len(xb) for xb, _, _ in got] == [8, 8, 8, 8, 5]
    for i, (xb, yb, ref) in enumerate(got):
        assert yb is None
        np.testing.assert_array_equal(xb, x[8 * i:8 * i + 8])
        assert ref.dtype == np.float32
        assert ref.tobytes() == execute_float(digits_graph, xb, dtype=np.float32).tobytes()


class LoggedSource:
    """A DataSource's batches that log when each is read, and fail at batch `fail_at` (DataError)."""

    def __init__(self, source, fail_at: int | None = None):
        self.source, self.fail_at, self.reads = source, fail_at, []

    def batches(self, batch_size, start=0, stop=None):
        for i, batch in enumerate(self.source.batches(batch_size, start, stop)):
            if i == self.fail_at:
                raise DataError(f"batch {i}: unreadable")
            self.reads.append(i)
            yield batch


def test_read_ahead_is_one_batch_and_read_errors_come_in_order(digits_graph):
    x = np.random.default_rng(4).standard_normal((40, *digits_graph.input_shape)).astype(np.float32)
    source = LoggedSource(open_data((x, None), digits_graph.input_shape), fail_at=3)
    handed = []
    with pytest.raises(DataError, match="batch 3: unreadable"):
        with pipeline.Fp32Ahead(digits_graph, source, pipeline.Shard(0, 40, 4), None) as ahead:
            assert source.reads == [0]   # batch 0 read (and its pass started) before anything is asked for
            for i, (xb, _, ref) in enumerate(ahead):
                assert max(source.reads) <= i + 1   # never more than the next batch held
                ref()
                handed.append(i)
    assert handed == [0, 1, 2]   # the batches before the unreadable one were all done first
    assert not fp32_threads()


def failing_conv(node, xs, p):
    raise TersimError(f"node '{node.name}': no float rule for this conv")


def test_fp32_error_on_the_thread_is_the_same_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(float_exec.FLOAT32_OPS, "conv2d", failing_conv)
    assert main(["run", str(HW), str(MODEL), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "tersim: error: node 'conv2d': no float rule for this conv\n"
    assert not list(tmp_path.iterdir())
    assert not fp32_threads()


def test_fp32_error_wins_over_the_integer_error_of_the_same_batch(monkeypatch):
    """Serially the FP32 pass of a batch ran before its integer run: its error is the one raised."""
    monkeypatch.setitem(float_exec.FLOAT32_OPS, "conv2d", failing_conv)

    def failing_execute(*args, **kwargs):
        raise ValueError("integer engine failed")

    monkeypatch.setattr(pipeline, "execute", failing_execute)
    with pytest.raises(TersimError, match="no float rule"):
        pipeline.evaluate(HW, MODEL)
    assert not fp32_threads()


def slow_conv(node, xs, p):
    time.sleep(1.0)
    return float_exec._conv2d(node, xs, p)


def test_an_interrupt_abandons_the_running_fp32_pass(monkeypatch, digits_graph):
    """The pass of 8 convs would take >= 8 s: close() stops it after its current node."""
    monkeypatch.setitem(float_exec.FLOAT32_OPS, "conv2d", slow_conv)

    def interrupted(*args, **kwargs):
        time.sleep(0.5)   # the FP32 pass is inside its first conv
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "execute", interrupted)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pipeline.evaluate(HW, digits_graph)
    assert time.monotonic() - start < 4.0
    assert not fp32_threads()


CTRL_C_SCRIPT = """
import os, signal, sys, time
import tersim.frontend.float_exec as float_exec
import tersim.pipeline as pipeline
from tersim.cli import main

def slow_conv(node, xs, p):
    time.sleep(1.0)
    return float_exec._conv2d(node, xs, p)

KILLED = []

def execute(*args, **kwargs):
    time.sleep(0.5)
    KILLED.append(time.monotonic())
    os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C while the FP32 thread is inside a conv
    time.sleep(60)

float_exec.FLOAT32_OPS["conv2d"] = slow_conv   # the float32 pass's convolution
pipeline.execute = execute
code = main(sys.argv[1:])
with open(os.environ["SECONDS_TO_EXIT"], "w") as fh:
    fh.write(str(time.monotonic() - KILLED[0]))
sys.exit(code)
"""


def test_ctrl_c_with_the_fp32_thread_running_exits_130_at_once(tmp_path):
    out, seconds = tmp_path / "out", tmp_path / "seconds"
    proc = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT, "run", str(HW), str(MODEL), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "SECONDS_TO_EXIT": str(seconds)})
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "tersim: interrupted"
    assert not out.exists() or not list(out.iterdir())
    # from the signal to main's return: the current conv (1 s) at most, not the rest of the pass (7 s more)
    assert float(seconds.read_text()) < 3.0
