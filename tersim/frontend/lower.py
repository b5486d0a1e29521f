"""torch.export (ATen) graph -> tersim IR.

One pass over the decomposed FX graph in topological order. Every FX value maps to one of:
an IR node name (an activation), a torch constant (parameters, buffers and anything computed only
from them, folded eagerly), a `_Multi` (a multi-output op whose output 0 is an IR node), `SHAPE`
(symbolic-size arithmetic and asserts, dropped) or `UNKNOWN` (downstream of an unsupported op).
Unsupported ops are collected, all of them, and raised together before anything is returned.
"""
from __future__ import annotations

import gc
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
from torch.export.graph_signature import InputKind, OutputKind, TensorArgument

from tersim.errors import ModelLoadError, UnsupportedOpsError
from tersim.frontend.ir import Graph, Node

aten = torch.ops.aten

# ops kept whole by run_decompositions (everything else in the default table is decomposed)
KEEP_WHOLE = (aten.conv2d.default, aten.linear.default)


def decomposition_table() -> dict:
    """torch.export's default decompositions minus conv2d/linear, so those stay single ops."""
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        table.pop(op, None)
    return table


def lower_module(module: torch.nn.Module, example_input: torch.Tensor, name: str = "model") -> Graph:
    """Export `module` in eval mode with `example_input` (batch included) and lower it."""
    module.eval()
    return export_and_lower(module, example_input, name)


def export_and_lower(module: torch.nn.Module, example_input: torch.Tensor, name: str) -> Graph:
    """torch.export `module` as it is (no .eval(): `ExportedProgram.module()` refuses it) and lower it."""
    try:
        with torch.no_grad():
            ep = torch.export.export(module, (example_input,))
    except Exception as exc:  # torch raises many types; the user needs one line
        raise ModelLoadError(f"{name}: torch.export failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    return lower_exported(ep, name)


def lower_exported(ep: torch.export.ExportedProgram, name: str) -> Graph:
    """Decompose `ep` to core ATen (conv2d/linear kept) and translate it to a tersim Graph."""
    try:
        with warnings.catch_warnings():  # torch 2.13 warns about its own deprecated LeafSpec here: not ours
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            ep = ep.run_decompositions(decomposition_table())
    except Exception as exc:
        raise ModelLoadError(f"{name}: decomposing the exported program failed: {_first_line(exc)}") from exc
    graph = _Lowering(ep, name).run()
    del ep
    gc.collect()  # torch.export's programs hold copies of the weights in reference cycles: free them now
    return graph


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# ----------------------------------------------------------------------------------------------------
# value markers


class _Marker:
    def __init__(self, label: str):
        self.label = label

    def __repr__(self) -> str:
        return self.label


SHAPE = _Marker("SHAPE")      # a SymInt / assert result: only shape bookkeeping
UNKNOWN = _Marker("UNKNOWN")  # produced downstream of an unsupported op


@dataclass
class _Multi:
    """A tuple-valued op (max_pool2d_with_indices, batch norm): output 0 is IR node `first`."""

    first: str
    op: str


class _Unsupported(Exception):
    """This node cannot be lowered; `reason` is appended to the op name in the report."""

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class _Skip(Exception):
    """An input is UNKNOWN (its producer was already reported): propagate silently."""


def _ops(*names: str) -> set:
    """Resolve 'name.overload' ATen ops, skipping any this torch build does not have."""
    found = set()
    for qualified in names:
        packet, overload = qualified.rsplit(".", 1)
        op = getattr(getattr(aten, packet, None), overload, None)
        if op is not None:
            found.add(op)
    return found


# ops that only check or compute shapes (their values are SymInts, bools or None)
SHAPE_OPS = _ops(
    "sym_size.int", "sym_numel.default", "sym_stride.int", "sym_storage_offset.default",
    "_assert_scalar.default", "_assert_async.default", "_assert_async.msg", "_assert_tensor_metadata.default",
    "sym_constrain_range.default", "sym_constrain_range_for_size.default",
    "_functional_sym_constrain_range.default", "_functional_sym_constrain_range_for_size.default",
    "_functional_assert_async.msg", "_functional_assert_scalar.default",
)
# ops that return their input unchanged in eval mode
NOOP_OPS = _ops("clone.default", "alias.default", "detach.default", "detach_.default",
                "lift_fresh_copy.default", "contiguous.default")
# shape changes that keep row-major order: lower to `flatten` when the result is (N, -1)
RESHAPE_OPS = _ops("view.default", "reshape.default", "_unsafe_view.default", "view_copy.default",
                   "flatten.using_ints", "squeeze.dim", "squeeze.dims", "squeeze.default")


def _bind(n: torch.fx.Node) -> dict[str, Any]:
    """Arguments of an ATen call by schema name, defaults filled in."""
    bound: dict[str, Any] = {}
    for i, arg in enumerate(n.target._schema.arguments):
        if i < len(n.args) and not arg.kwarg_only:
            bound[arg.name] = n.args[i]
        elif arg.name in n.kwargs:
            bound[arg.name] = n.kwargs[arg.name]
        else:
            bound[arg.name] = arg.default_value if arg.has_default_value() else None
    return bound


def _pair(v: Any, name: str) -> tuple[int, int]:
    """ATen int lists may hold 1 or 2 entries (or be a plain int): always return (h, w)."""
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return (int(v[0]), int(v[0]))
        if len(v) == 2:
            return (int(v[0]), int(v[1]))
        raise _Unsupported(f"{name} {list(v)} is not 2-D")
    return (int(v), int(v))


def _is_shape_value(n: torch.fx.Node) -> bool:
    val = n.meta.get("val")
    return val is None or isinstance(val, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool))


# ----------------------------------------------------------------------------------------------------
# the lowering pass


class _Lowering:
    def __init__(self, ep: torch.export.ExportedProgram, name: str):
        self.ep = ep
        self.name = name
        self.gm = ep.graph_module
        self.values: dict[str, Any] = {}            # FX node name -> value (see module docstring)
        self.nodes: dict[str, Node] = {}             # IR nodes in insertion (topological) order
        self.fx_of: dict[str, list[torch.fx.Node]] = {}  # IR name -> FX nodes whose value it is
        self.offenders: list[tuple[str, str]] = []

    # -- entry point ---------------------------------------------------------------------------------

    def run(self) -> Graph:
        self._bind_placeholders()
        for n in self.gm.graph.nodes:
            if n.op == "call_function":
                self._lower_call(n)
            elif n.op not in ("placeholder", "output"):
                self.offenders.append((n.name, f"{n.op} {n.target}"))
                self.values[n.name] = UNKNOWN
        if self.offenders:
            raise UnsupportedOpsError(self.offenders, source=self.name)
        output = self._output_name()
        return Graph(name=self.name, nodes=self._live_nodes(output), output=output)

    def _bind_placeholders(self) -> None:
        sig = self.ep.graph_signature
        user_inputs = []
        for spec in sig.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                user_inputs.append(spec)
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                tensor = self.ep.state_dict.get(spec.target)
                if tensor is None:
                    tensor = self.ep.constants.get(spec.target)
                if tensor is None:
                    raise ModelLoadError(f"{self.name}: no stored value for {spec.kind.name} '{spec.target}'")
                self.values[spec.arg.name] = tensor.detach()
            else:
                raise ModelLoadError(f"{self.name}: graph input '{spec.arg.name}' of kind {spec.kind.name} "
                                     "is not supported (only one tensor input plus weights)")
        if len(user_inputs) != 1 or not isinstance(user_inputs[0].arg, TensorArgument):
            found = ", ".join(s.arg.name if hasattr(s.arg, "name") else repr(s.arg) for s in user_inputs)
            raise ModelLoadError(f"{self.name}: tersim needs exactly one tensor input, the model takes "
                                 f"{len(user_inputs)} ({found})")
        input_name = user_inputs[0].arg.name
        fx_input = next(n for n in self.gm.graph.nodes if n.op == "placeholder" and n.name == input_name)
        val = fx_input.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() < 2 or not val.dtype.is_floating_point:
            raise ModelLoadError(f"{self.name}: the input must be a float tensor (N, ...), got {val}")
        if not all(isinstance(d, int) for d in val.shape[1:]):
            raise ModelLoadError(f"{self.name}: input shape {tuple(val.shape)} has dynamic non-batch "
                                 "dimensions; give a concrete input shape (--input-shape C,H,W)")
        self.emit(fx_input, "input", [])

    def _output_name(self) -> str:
        outputs = [s for s in self.ep.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
        if len(outputs) != 1 or not isinstance(outputs[0].arg, TensorArgument):
            raise ModelLoadError(f"{self.name}: tersim needs exactly one tensor output, "
                                 f"the model returns {len(outputs)}")
        value = self.values.get(outputs[0].arg.name)
        if not isinstance(value, str):
            raise ModelLoadError(f"{self.name}: the output does not depend on the input")
        return value

    def _live_nodes(self, output: str) -> list[Node]:
        """Drop IR nodes that do not reach the output (e.g. results only used by shape checks)."""
        live = {output}
        for node in reversed(list(self.nodes.values())):
            if node.name in live:
                live.update(node.inputs)
        return [node for node in self.nodes.values() if node.name in live]

    # -- one FX node -----------------------------------------------------------------------------------

    def _lower_call(self, n: torch.fx.Node) -> None:
        target = n.target
        if target in SHAPE_OPS or (not isinstance(target, torch._ops.OpOverload)
                                   and target is not operator.getitem and _is_shape_value(n)):
            self.values[n.name] = SHAPE
            return
        inputs = [self.values[a.name] for a in n.all_input_nodes]
        if any(v is SHAPE for v in inputs) and _is_shape_value(n):
            self.values[n.name] = SHAPE
            return
        if all(isinstance(v, (torch.Tensor, tuple)) for v in inputs) and target is not operator.getitem:
            self._fold_constant(n)
            return
        handler = HANDLERS.get(target)
        if handler is None and target in NOOP_OPS:
            handler = _noop
        if handler is None and target in RESHAPE_OPS:
            handler = _reshape
        if handler is None:
            self.offenders.append((n.name, _op_name(n)))
            self.values[n.name] = UNKNOWN
            return
        try:
            handler(self, n, _bind(n) if isinstance(target, torch._ops.OpOverload) else {})
        except _Skip:
            self.values[n.name] = UNKNOWN
        except _Unsupported as exc:
            label = _op_name(n) + (f" ({exc.reason})" if exc.reason else "")
            self.offenders.append((n.name, label))
            self.values[n.name] = UNKNOWN

    def _fold_constant(self, n: torch.fx.Node) -> None:
        """All inputs are constants (weights): compute the value now, e.g. t(weight) for addmm."""
        def sub(a):
            return self.values[a.name] if isinstance(a, torch.fx.Node) else a
        args = torch.fx.node.map_aggregate(n.args, sub)
        kwargs = torch.fx.node.map_aggregate(n.kwargs, sub)
        try:
            with torch.no_grad():
                self.values[n.name] = n.target(*args, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"{self.name}: folding constant node '{n.name}' failed: {_first_line(exc)}") from exc

    # -- helpers for handlers ----------------------------------------------------------------------------

    def act(self, arg: Any) -> str:
        """IR name of an activation argument."""
        value = self.values.get(arg.name) if isinstance(arg, torch.fx.Node) else None
        if value is UNKNOWN:
            raise _Skip()
        if isinstance(value, str):
            return value
        raise _Unsupported("operand is not a tensor computed from the input")

    def const(self, arg: Any, what: str) -> torch.Tensor | None:
        """A constant tensor argument (weights), or None when absent."""
        if arg is None:
            return None
        value = self.values.get(arg.name) if isinstance(arg, torch.fx.Node) else arg
        if value is UNKNOWN:
            raise _Skip()
        if not isinstance(value, torch.Tensor):
            raise _Unsupported(f"{what} is not a constant tensor")
        return value

    def emit(self, n: torch.fx.Node, op: str, inputs: list[str], attrs: dict | None = None,
             weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
             name: str | None = None, shape: tuple[int, ...] | None = None) -> str:
        """Add an IR node computing FX node `n`; shape defaults to `n`'s fake-tensor meta (batch dropped)."""
        name = self._unique(name or n.name)
        self.nodes[name] = Node(name=name, op=op, inputs=list(inputs), attrs=dict(attrs or {}),
                                weight=_np32(weight), bias=_np32(bias),
                                shape=shape if shape is not None else _shape(n))
        self.fx_of[name] = [n]
        self.values[n.name] = name
        return name

    def alias(self, n: torch.fx.Node, ir_name: str) -> None:
        """`n` computes the same tensor as IR node `ir_name` (no-op ops, folded BN)."""
        self.values[n.name] = ir_name
        self.fx_of[ir_name].append(n)

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.nodes:
            name, k = f"{base}_{k}", k + 1
        return name


def _shape(n: torch.fx.Node) -> tuple[int, ...]:
    val = n.meta.get("val")
    if isinstance(val, (tuple, list)):
        val = val[0]
    if not isinstance(val, torch.Tensor):
        raise _Unsupported("no shape information")
    dims = tuple(val.shape[1:])
    if not all(isinstance(d, int) for d in dims):
        raise _Unsupported(f"dynamic shape {tuple(val.shape)}")
    return tuple(int(d) for d in dims)


def _rank(n: Any) -> int:
    val = n.meta.get("val") if isinstance(n, torch.fx.Node) else None
    if isinstance(val, (tuple, list)):
        val = val[0]
    return val.dim() if isinstance(val, torch.Tensor) else -1


def _np32(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float32).cpu().numpy().copy()


def _op_name(n: torch.fx.Node) -> str:
    target = n.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # e.g. 'aten.sigmoid.default'
    return getattr(target, "__name__", str(target))


# ----------------------------------------------------------------------------------------------------
# op handlers: (lowering, fx node, bound args) -> None; each maps one ATen op to the IR


def _noop(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """clone/alias/detach/...: the same tensor."""
    lw.alias(n, lw.act(n.args[0]))


def _to_copy(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """`.to()` that keeps dtype (and device cpu) is a no-op; casts are not supported."""
    src = lw.act(a["self"])
    in_val, out_val = n.args[0].meta.get("val"), n.meta.get("val")
    if in_val is None or out_val is None or in_val.dtype != out_val.dtype:
        raise _Unsupported("dtype cast")
    lw.alias(n, src)


def _dropout(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """Eval-mode dropout is the identity; a training-mode one is not."""
    if a["train"]:
        raise _Unsupported("train=True")
    src = lw.act(a["input"])
    if n.target == aten.native_dropout.default:
        lw.values[n.name] = _Multi(src, "native_dropout")
        lw.fx_of[src].append(n)
    else:
        lw.alias(n, src)


def _getitem(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """Output 0 of max_pool2d_with_indices / batch norm / dropout; other outputs are unsupported."""
    source, index = n.args
    value = lw.values[source.name]
    if value is UNKNOWN:
        raise _Skip()
    if value is SHAPE:
        lw.values[n.name] = SHAPE
        return
    if isinstance(value, tuple):  # a folded constant tuple
        lw.values[n.name] = value[index]
        return
    if not isinstance(value, _Multi):
        raise _Unsupported("indexing a tensor")
    if index != 0:
        if not n.users:
            lw.values[n.name] = UNKNOWN
            return
        raise _Unsupported(f"uses output {index} of {value.op}")
    lw.alias(n, value.first)


def _conv(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """aten.conv2d / aten.convolution (non-transposed, 2-D) -> conv2d."""
    x = lw.act(a["input"])
    weight = lw.const(a["weight"], "weight")
    bias = lw.const(a["bias"], "bias")
    if a.get("transposed"):
        raise _Unsupported("transposed convolution")
    if weight.dim() != 4 or _rank(a["input"]) != 4:
        raise _Unsupported(f"{weight.dim() - 2}-D convolution")
    if a.get("output_padding") and any(a["output_padding"]):
        raise _Unsupported("output_padding")
    padding = a["padding"]
    if isinstance(padding, str):  # aten.conv2d.padding: 'valid' / 'same'
        padding = _string_padding(padding, weight.shape[2:], _pair(a["dilation"], "dilation"), _pair(a["stride"], "stride"))
    attrs = {"stride": _pair(a["stride"], "stride"), "padding": _pair(padding, "padding"),
             "dilation": _pair(a["dilation"], "dilation"), "groups": int(a["groups"])}
    lw.emit(n, "conv2d", [x], attrs, weight, bias)


def _string_padding(mode: str, kernel, dilation, stride) -> tuple[int, int]:
    """'valid' -> 0; 'same' -> symmetric d*(k-1)/2 when that is an integer (else reject)."""
    if mode == "valid":
        return (0, 0)
    if mode == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if any(t % 2 for t in total) or stride != (1, 1):
            raise _Unsupported("padding='same' needs asymmetric padding here (even kernel) or stride > 1")
        return (total[0] // 2, total[1] // 2)
    raise _Unsupported(f"padding={mode!r}")


def _linear(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """aten.linear on a 2-D (N, features) input -> linear."""
    x = lw.act(a["input"])
    if _rank(a["input"]) != 2:
        raise _Unsupported(f"input of rank {_rank(a['input'])}, tersim needs (N, features)")
    lw.emit(n, "linear", [x], {}, lw.const(a["weight"], "weight"), lw.const(a["bias"], "bias"))


def _addmm(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """bias + x @ W^T (W^T already folded to a constant) -> linear."""
    x = lw.act(a["mat1"])
    mat2 = lw.const(a["mat2"], "mat2")
    bias = lw.const(a["self"], "bias")
    if a["beta"] != 1 or a["alpha"] != 1 or bias.dim() != 1:
        raise _Unsupported("beta/alpha != 1 or non-vector bias")
    lw.emit(n, "linear", [x], {}, mat2.t(), bias)


def _mm(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """x @ W^T (constant right operand) -> linear without bias."""
    x = lw.act(a["self"])
    lw.emit(n, "linear", [x], {}, lw.const(a["mat2"], "mat2").t(), None)


def _relu(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    lw.emit(n, "relu", [lw.act(a["self"])])


def _clamp(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """hardtanh (ReLU6) / clamp with constant float bounds -> clamp."""
    low = a.get("min_val", a.get("min"))
    high = a.get("max_val", a.get("max"))
    if any(isinstance(v, torch.fx.Node) for v in (low, high)):
        raise _Unsupported("bounds must be constants")
    lw.emit(n, "clamp", [lw.act(a["self"])], {"min": None if low is None else float(low),
                                               "max": None if high is None else float(high)})


def _max_pool(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """max_pool2d[_with_indices] -> max_pool2d (the indices output must be unused)."""
    x = lw.act(a["self"])
    if _rank(a["self"]) != 4:
        raise _Unsupported("input is not NCHW")
    kernel = _pair(a["kernel_size"], "kernel_size")
    attrs = {"kernel": kernel, "stride": _pair(a["stride"] or kernel, "stride"),
             "padding": _pair(a["padding"], "padding"), "dilation": _pair(a["dilation"], "dilation"),
             "ceil_mode": bool(a["ceil_mode"])}
    name = lw.emit(n, "max_pool2d", [x], attrs)
    if n.target == aten.max_pool2d_with_indices.default:
        lw.values[n.name] = _Multi(name, "max_pool2d_with_indices")


def _avg_pool(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    x = lw.act(a["self"])
    if _rank(a["self"]) != 4:
        raise _Unsupported("input is not NCHW")
    kernel = _pair(a["kernel_size"], "kernel_size")
    divisor = a["divisor_override"]
    attrs = {"kernel": kernel, "stride": _pair(a["stride"] or kernel, "stride"),
             "padding": _pair(a["padding"], "padding"), "ceil_mode": bool(a["ceil_mode"]),
             "count_include_pad": bool(a["count_include_pad"]),
             "divisor_override": None if divisor is None else int(divisor)}
    lw.emit(n, "avg_pool2d", [x], attrs)


def _adaptive_avg_pool(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    x = lw.act(a["self"])
    if _rank(a["self"]) != 4:
        raise _Unsupported("input is not NCHW")
    lw.emit(n, "adaptive_avg_pool2d", [x], {"output_size": _pair(a["output_size"], "output_size")})


def _mean(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """mean over H and W: keepdim -> adaptive_avg_pool2d(1, 1); else that plus flatten."""
    x = lw.act(a["self"])
    if _rank(a["self"]) != 4 or a["dtype"] is not None:
        raise _Unsupported("only the mean over H, W of an NCHW tensor is supported")
    dims = {d % 4 for d in (a["dim"] or [])}
    if dims != {2, 3}:
        raise _Unsupported(f"mean over dims {list(a['dim'])}")
    attrs = {"output_size": (1, 1)}
    if a["keepdim"]:
        lw.emit(n, "adaptive_avg_pool2d", [x], attrs)
        return
    channels = _shape(n)[0]
    pool = lw.emit(n, "adaptive_avg_pool2d", [x], attrs, name=f"{n.name}_pool", shape=(channels, 1, 1))
    lw.emit(n, "flatten", [pool])


def _reshape(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """view/reshape/flatten/squeeze: same shape -> no-op; (N, C, ...) -> (N, prod) -> flatten."""
    src_arg = n.args[0]
    x = lw.act(src_arg)
    in_val, out_val = src_arg.meta.get("val"), n.meta.get("val")
    if in_val is None or out_val is None:
        raise _Unsupported("no shape information")
    in_shape, out_shape = tuple(in_val.shape), tuple(out_val.shape)
    if in_shape == out_shape:
        lw.alias(n, x)
        return
    if len(out_shape) == 2 and out_shape[0] == in_shape[0] and out_shape[1] == math.prod(in_shape[1:]):
        lw.emit(n, "flatten", [x])
        return
    raise _Unsupported(f"reshape {list(in_shape)} -> {list(out_shape)}; only flattening to (N, -1) is supported")


def _add(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """tensor + tensor of the same shape (no broadcasting, alpha 1)."""
    lhs, rhs = lw.act(a["self"]), lw.act(a["other"])
    if a["alpha"] != 1:
        raise _Unsupported("alpha != 1")
    if lw.nodes[lhs].shape != lw.nodes[rhs].shape:
        raise _Unsupported(f"broadcasting {lw.nodes[lhs].shape} + {lw.nodes[rhs].shape}")
    lw.emit(n, "add", [lhs, rhs])


def _cat(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """Concatenation along channels (dim 1) only."""
    tensors = a["tensors"]
    inputs = [lw.act(t) for t in tensors]
    rank = _rank(tensors[0])
    if int(a["dim"]) % rank != 1:
        raise _Unsupported(f"dim={a['dim']}, only channel concat (dim 1) is supported")
    if len(inputs) == 1:
        lw.alias(n, inputs[0])
        return
    lw.emit(n, "concat", inputs, {"dim": 1})


def _batch_norm(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """Eval-mode batch norm folded into the conv/linear producing its input (its only consumer)."""
    if a.get("training"):
        raise _Unsupported("training-mode batch norm")
    src = lw.act(a["input"])
    producer = lw.nodes[src]
    group = lw.fx_of[src]
    other_users = {u for f in group for u in f.users} - set(group) - {n}
    if producer.op not in ("conv2d", "linear") or other_users:
        raise _Unsupported("batch norm not directly after a conv/linear whose output has no other consumer")
    mean = lw.const(a["running_mean"], "running_mean").double()
    var = lw.const(a["running_var"], "running_var").double()
    gamma = lw.const(a["weight"], "weight")
    beta = lw.const(a["bias"], "bias")
    gamma = torch.ones_like(mean) if gamma is None else gamma.double()
    beta = torch.zeros_like(mean) if beta is None else beta.double()
    scale = gamma / torch.sqrt(var + float(a["eps"]))
    weight = torch.from_numpy(producer.weight).double()
    bias = torch.zeros_like(mean) if producer.bias is None else torch.from_numpy(producer.bias).double()
    if producer.bn is not None:
        raise _Unsupported("two batch norms after one conv/linear")
    producer.bn = {"mean": mean.numpy(), "var": var.numpy(), "gamma": gamma.numpy(), "beta": beta.numpy(),
                   "bias": bias.numpy(), "eps": float(a["eps"])}
    producer.weight = _np32(weight * scale.reshape(-1, *[1] * (weight.dim() - 1)))
    producer.bias = _np32((bias - mean) * scale + beta)
    if n.target == aten._native_batch_norm_legit_no_training.default:
        lw.values[n.name] = _Multi(src, "batch_norm")
        lw.fx_of[src].append(n)
    else:
        lw.alias(n, src)


def _constant_pad(lw: _Lowering, n: torch.fx.Node, a: dict) -> None:
    """Explicit padding (e.g. from padding='same' with an even kernel) has no IR equivalent."""
    lw.act(a["self"])
    raise _Unsupported(f"explicit padding {list(a['pad'])}, e.g. from padding='same' with an even kernel")


HANDLERS: dict[Any, Callable[[_Lowering, torch.fx.Node, dict], None]] = {
    operator.getitem: _getitem,
    aten._to_copy.default: _to_copy,
    aten.dropout.default: _dropout,
    aten.native_dropout.default: _dropout,
    aten.conv2d.default: _conv,
    aten.conv2d.padding: _conv,
    aten.convolution.default: _conv,
    aten.linear.default: _linear,
    aten.addmm.default: _addmm,
    aten.mm.default: _mm,
    aten.relu.default: _relu,
    aten.relu_.default: _relu,
    aten.hardtanh.default: _clamp,
    aten.hardtanh_.default: _clamp,
    aten.clamp.default: _clamp,
    aten.max_pool2d.default: _max_pool,
    aten.max_pool2d_with_indices.default: _max_pool,
    aten.avg_pool2d.default: _avg_pool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten._adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten.mean.dim: _mean,
    aten.add.Tensor: _add,
    aten.add_.Tensor: _add,
    aten.cat.default: _cat,
    aten.concat.default: _cat,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    aten.batch_norm.default: _batch_norm,
    aten.constant_pad_nd.default: _constant_pad,
}
