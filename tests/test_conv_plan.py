"""The cached weight plan of tersim.kernels.conv: dropping the folded weights once packed changes no result."""
import numpy as np
import pytest

from tersim.kernels import conv, simd
from tersim.kernels.reference_torch import conv2d_int as conv_ref

ARGS = dict(group_size=4, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, acc_bits=32, saturate=True,
            shift=6, out_lo=-128, out_hi=127)


def _layer(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (2, 40, 9, 7)).astype(np.int32)
    codes = rng.integers(-1, 2, (64, 40, 3, 3)).astype(np.int8)
    alpha = rng.integers(0, 256, (64, 3, 3, 10)).astype(np.int32)
    bias = rng.integers(-5000, 5000, 64).astype(np.int64)
    return x, codes, alpha, bias


@pytest.mark.skipif(not simd.HAVE_VNNI, reason="the packed-only plan exists on the VNNI path")
@pytest.mark.parametrize("strategy", ["dot", "grid"])
def test_folded_weights_rederived_after_packing(monkeypatch, strategy):
    x, codes, alpha, bias = _layer(1)
    conv._plan_cache.clear()
    y, ev = conv.conv2d_int(x, codes, alpha, bias, **ARGS)             # simd: packs, drops weff
    plan = next(iter(conv._plan_cache.values()))
    assert "weff" not in plan and "wp" in plan
    monkeypatch.setattr(conv, "STRATEGY", strategy)                     # needs weff again
    y2, ev2 = conv.conv2d_int(x, codes, alpha, bias, **ARGS)
    ref, ev_ref = conv_ref(x, codes, alpha, bias, **ARGS)
    np.testing.assert_array_equal(y, np.asarray(ref))
    np.testing.assert_array_equal(y2, np.asarray(ref))
    assert ev == ev2 == int(ev_ref)
    x_big = x * 300                                                     # |x| >= 2**15: the grid takes fast channels
    monkeypatch.setattr(conv, "STRATEGY", "auto")
    y3, ev3 = conv.conv2d_int(x_big, codes, alpha, bias, **ARGS)
    ref3, ev_ref3 = conv_ref(x_big, codes, alpha, bias, **ARGS)
    np.testing.assert_array_equal(y3, np.asarray(ref3))
    assert ev3 == int(ev_ref3)


@pytest.mark.skipif(not simd.HAVE_VNNI, reason="the packed-only plan exists on the VNNI path")
def test_weights_changed_in_place_are_refused():
    x, codes, alpha, bias = _layer(2)
    conv._plan_cache.clear()
    conv.conv2d_int(x, codes, alpha, bias, **ARGS)
    plan = next(iter(conv._plan_cache.values()))
    codes[0, 0, 0, 0] = -codes[0, 0, 0, 0] or 1
    with pytest.raises(RuntimeError, match="in place"):
        conv._folded_weights(plan)


def test_weight_maxima_follow_the_content():
    """The argument checks reuse max|codes| and max|alpha| by content: weights changed in place after a call
    are checked again (an out-of-range code is still refused; a bigger alpha still changes the result)."""
    x, codes, alpha, bias = _layer(3)
    conv.conv2d_int(x, codes, alpha, bias, **ARGS)
    alpha[5, 1, 1, 2] = 2**20                                           # may overflow now: exact path, events
    y, ev = conv.conv2d_int(x, codes, alpha, bias, **dict(ARGS, acc_bits=24))
    ref, ev_ref = conv_ref(x, codes, alpha, bias, **dict(ARGS, acc_bits=24))
    np.testing.assert_array_equal(y, np.asarray(ref))
    assert ev == int(ev_ref) > 0
    codes[0, 0, 0, 0] = -128
    with pytest.raises(ValueError, match="codes must lie"):
        conv.conv2d_int(x, codes, alpha, bias, **ARGS)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16])
def test_max_abs_parallel_and_numpy_paths(dtype):
    """max_abs over the parallel one-pass kernel (large contiguous signed arrays) and numpy (the rest) at
    the dtype's extremes, wherever they sit."""
    from tersim.kernels.common import MIN_MAX_PARALLEL, max_abs

    info = np.iinfo(dtype)
    for n in (5, MIN_MAX_PARALLEL + 3):
        for pos in (0, n // 2, n - 1):
            a = np.zeros(n, dtype)
            a[pos] = info.min
            assert max_abs(a) == abs(int(info.min))
            assert max_abs(a[::2]) == (abs(int(info.min)) if pos % 2 == 0 else 0)  # not contiguous: numpy
            a[pos] = info.max
            assert max_abs(a.reshape(1, -1)) == int(info.max)


def test_fingerprint_parallel_equals_serial():
    """Large weights are fingerprinted over threads: the same sums as the serial pass, and one changed word
    changes them."""
    words = np.random.default_rng(4).integers(0, 2**63, conv.FINGERPRINT_PARALLEL + 5, dtype=np.int64).view(np.uint64)
    assert conv.fingerprint_parallel(words) == conv.fingerprint(words)
    before = conv.fingerprint_parallel(words)
    words[conv.FINGERPRINT_PARALLEL] ^= np.uint64(1 << 40)
    assert conv.fingerprint_parallel(words)[0] != before[0]


@pytest.mark.parametrize("shape", [(1, 40, 9, 7), (3, 5, 1, 1)])
def test_without_vnni_auto_takes_the_numba_kernels(monkeypatch, shape):
    """A CPU without AVX-512 VNNI: auto picks the pure-Numba kernels, never simd, and gives the same result."""
    x, codes, alpha, bias = _layer(5)
    x = np.random.default_rng(6).integers(-128, 128, (shape[0], 40, shape[2], shape[3])).astype(np.int32)
    monkeypatch.setattr(simd, "HAVE_VNNI", False)
    monkeypatch.setattr(simd, "conv2d_vnni", lambda *a: pytest.fail("the VNNI kernel ran"))
    y, ev = conv.conv2d_int(x, codes, alpha, bias, **ARGS)
    ref, ev_ref = conv_ref(x, codes, alpha, bias, **ARGS)
    np.testing.assert_array_equal(y, np.asarray(ref))
    assert ev == int(ev_ref)


def _frozen(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


def test_read_only_weights_are_hashed_once(monkeypatch):
    """Read-only weights (quantize_graph freezes every layer's) are keyed by identity: a repeated call hashes
    nothing, and the result still equals the reference."""
    x, codes, alpha, bias = _layer(4)
    codes, alpha, bias = _frozen(codes, alpha, bias)
    hashed = []
    monkeypatch.setattr(conv, "_fingerprint_key", lambda a, f=conv._fingerprint_key: hashed.append(a.shape) or f(a))
    y1, _ = conv.conv2d_int(x, codes, alpha, bias, **ARGS)
    first = len(hashed)
    y2, _ = conv.conv2d_int(x, codes, alpha, bias, **ARGS)
    assert first == 2 and len(hashed) == first                          # codes and alpha once, then never
    ref, _ = conv_ref(x, codes, alpha, bias, **ARGS)
    np.testing.assert_array_equal(y1, np.asarray(ref))
    np.testing.assert_array_equal(y2, np.asarray(ref))


def test_read_only_view_of_writeable_weights_follows_edits():
    """A read-only view does not freeze its base: edits through the base are seen (hashed every call)."""
    x, codes, alpha, bias = _layer(5)
    view = codes.view()
    view.flags.writeable = False
    assert conv._frozen_root(view) is None
    conv.conv2d_int(x, view, alpha, bias, **ARGS)
    codes[:8] = -codes[:8]
    y, _ = conv.conv2d_int(x, view, alpha, bias, **ARGS)
    ref, _ = conv_ref(x, codes, alpha, bias, **ARGS)
    np.testing.assert_array_equal(y, np.asarray(ref))


def test_new_frozen_weights_in_a_reused_slot_are_not_mistaken():
    """Frozen arrays created and dropped in turn (CPython often reuses their ids) each get their own plan."""
    x = _layer(6)[0]
    for seed in range(6):
        _, codes, alpha, bias = _layer(10 + seed)
        codes, alpha = _frozen(codes, alpha)
        y, ev = conv.conv2d_int(x, codes, alpha, bias, **ARGS)
        ref, ev_ref = conv_ref(x, codes, alpha, bias, **ARGS)
        np.testing.assert_array_equal(y, np.asarray(ref))
        assert ev == int(ev_ref)
        del codes, alpha


def test_quantize_graph_freezes_layer_weights():
    """quantize_graph hands out read-only weights (and read-only bases): an in-place edit raises instead of
    running on a stale packed copy; replacing the array is the way to change a layer."""
    import torch

    from tersim.config import Accelerator
    from tersim.engine.execute import execute, torch_reference_backend
    from tersim.frontend import lower_module
    from tersim.quantize.graph import quantize_graph

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 6, 6)
    qgraph = quantize_graph(lower_module(model, x, "tiny"), [x.numpy()], Accelerator())
    weighted = [layer for layer in qgraph.layers.values() if layer.codes is not None]
    assert len(weighted) == 2
    for layer in weighted:
        for a in (layer.codes, layer.alpha_q, layer.bias_q):
            assert conv._frozen_root(a) is not None
        with pytest.raises(ValueError, match="read-only"):
            layer.codes[0] = 0
    before = execute(qgraph, x.numpy()).output(qgraph)
    layer = weighted[1]
    layer.codes = -layer.codes                                           # a new array: a new plan
    after = execute(qgraph, x.numpy()).output(qgraph)
    ref = execute(qgraph, x.numpy(), backend=torch_reference_backend()).output(qgraph)
    np.testing.assert_array_equal(after, ref)
    assert not np.array_equal(before, after)


def test_repeated_calls_on_read_only_weights_skip_the_checks(monkeypatch):
    """A call with the same read-only weights, arguments, x shape and max|x| reuses the checked plan."""
    x, codes, alpha, bias = _layer(7)
    codes, alpha, bias = _frozen(codes, alpha, bias)
    checks = []
    monkeypatch.setattr(conv, "check_conv", lambda *a, f=conv.check_conv, **k: checks.append(1) or f(*a, **k))
    ys = [conv.conv2d_int(x, codes, alpha, bias, **ARGS)[0] for _ in range(3)]
    assert len(checks) == 1
    conv.conv2d_int(x[:1], codes, alpha, bias, **ARGS)                  # another shape: checked again
    assert len(checks) == 2
    ref, _ = conv_ref(x, codes, alpha, bias, **ARGS)
    for y in ys:
        np.testing.assert_array_equal(y, np.asarray(ref))


@pytest.mark.parametrize("vnni", [True, False] if simd.HAVE_VNNI else [False])
@pytest.mark.parametrize("strategy", ["auto", "dot", "grid"])
def test_cached_calls_follow_x_max_strategy_and_arguments(monkeypatch, vnni, strategy):
    """The reused plan is keyed by everything it depends on: max|x| (which channels may overflow a 24-bit
    accumulator, int16 operands or not), the kernel strategy, VNNI, and the output range; interleaved calls
    with read-only weights match the reference every time, events included."""
    monkeypatch.setattr(simd, "HAVE_VNNI", vnni)
    monkeypatch.setattr(conv, "STRATEGY", strategy)
    x, codes, alpha, bias = _layer(8)
    alpha[::3] = alpha[::3] * 16                                        # some channels overflow for large x
    codes, alpha, bias = _frozen(codes, alpha, bias)
    xs = [x, x * 300, x // 4, -x * 300 // 7, x]
    xs[2][0, 0, 0, 0] = -128
    for args in (dict(ARGS, acc_bits=24), dict(ARGS, acc_bits=24, out_lo=-7, out_hi=9, saturate=False), ARGS):
        for xi in xs + xs[::-1]:
            y, ev = conv.conv2d_int(xi, codes, alpha, bias, **args)
            ref, ev_ref = conv_ref(xi, codes, alpha, bias, **args)
            np.testing.assert_array_equal(y, np.asarray(ref))
            assert ev == int(ev_ref)


def test_lru_cache_keeps_the_most_recently_used_entries():
    from tersim.kernels.common import LruCache

    cache = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1          # a is now the most recent
    cache.put("c", 3)                   # evicts b, the least recently used
    assert "b" not in cache and cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    cache.put("a", 4)                   # an update is a use: c goes next
    cache.put("d", 5)
    assert "c" not in cache and list(cache.values()) == [4, 5]
    cache.clear()
    assert len(cache) == 0
