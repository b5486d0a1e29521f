"""Quantization-aware fine-tuning loop, checkpoints/resume, and the model file it writes.

    graph (BN folded) -> GraphNet (shadow weights) -> epochs of STE training under a method's plans
    -> torch.export of the float shadow weights (+ metadata) -> re-import check: same codes/alphas

Quantizers are tersim/quantize's (FGQ ternary / int8 weights, DFP activations). FGQ groups and
alphas are recomputed from the shadow weights at every forward pass, as `tersim run` computes them
once from the saved weights: the saved file holds those same float32 tensors bit for bit, so `run`
ternarizes it to exactly the codes and alphas of the last training forward (checked after writing).
Activation formats (power-of-two fracs) are recalibrated with `run`'s own rule (quantize_graph on
the first calibration batches of the training data, float model) at the start of every epoch.

Determinism: every random choice derives from the seed (`numpy.random.default_rng([seed, tag, i])`
per epoch for the shuffle, per step for stochastic precision), the lr is a pure function of the
step, and torch runs with deterministic algorithms; a rerun with the same seed and thread count is
identical, and a resumed run continues exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tersim.config import Accelerator
from tersim.data import check_arrays, check_input_shape, check_labels, model_classes
from tersim.errors import DataError, FinetuneError, one_line
from tersim.files import write_bytes_atomic
from tersim.finetune.graph_module import FLOAT_PLAN, FloatExport, GraphNet
from tersim.finetune.methods import (METHODS, JointKD, Method, Progressive, Stochastic, default_schedule,
                                     parse_schedule)
from tersim.frontend import Graph, import_model
from tersim.options import RunOptions
from tersim.quantize.graph import calibration_batches, quantize_graph

CKPT_FORMAT = "tersim-finetune-checkpoint/1"
METADATA_FILE = "tersim_finetune.json"
EVAL_BATCH = 256
KEEP_CHECKPOINTS = 2
_SHUFFLE, _STOCHASTIC = 0, 1  # rng stream tags


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (saved in checkpoints and in the model file)."""

    group_size: int
    act_bits: int
    method: str = "ste"
    epochs: int = 10
    lr: float = 1e-3                 # Adam, cosine decay to 0 over all steps
    batch_size: int = 64
    seed: int = 0
    fgq_method: str = "exact"        # ternarization rule (quantization.method of the hw config)
    first_last: str = "int8"         # first/last layer weights (quantization.first_last)
    schedule: str | None = None      # progressive: stages, default methods.default_schedule(act_bits)
    sp_start: float = 0.5            # stochastic: fraction of layers quantized at step 0
    sp_full: float = 0.2             # stochastic: final fraction of steps fully quantized
    kd_lambda: float = 1.0           # kd: weight of the distillation (KL) term
    kd_temperature: float = 2.0      # kd: softmax temperature T
    kd_features: tuple[str, ...] = ()  # kd: IR node names whose outputs are matched (normalised MSE)
    kd_feature_weight: float = 1.0   # kd: weight mu of the feature term
    kd_teacher: str = "joint"        # kd: 'joint' (trained alongside) or 'frozen' (the starting FP32 model)

    def quantization(self) -> RunOptions:
        """The run options this fine-tuning trains for (`tersim run` with them reproduces the trained codes)."""
        return RunOptions.of(group_size=self.group_size, act_bits=self.act_bits, method=self.fgq_method,
                             first_last=self.first_last)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise FinetuneError(f"--method: unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        for name in ("group_size", "act_bits", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise FinetuneError(f"--lr must be > 0, got {self.lr}")
        if self.kd_teacher not in ("joint", "frozen"):
            raise FinetuneError(f"--kd-teacher must be 'joint' or 'frozen', got '{self.kd_teacher}'")
        if self.method == "progressive":
            parse_schedule(self.schedule or default_schedule(self.act_bits), self.act_bits)


def make_method(cfg: FinetuneConfig) -> Method:
    if cfg.method == "progressive":
        return Progressive(cfg.act_bits, cfg.epochs, cfg.schedule)
    if cfg.method == "stochastic":
        return Stochastic(cfg.act_bits, cfg.epochs, cfg.seed, cfg.sp_start, cfg.sp_full)
    if cfg.method == "kd":
        return JointKD(cfg.act_bits, cfg.epochs, cfg.kd_lambda, cfg.kd_temperature, cfg.kd_features,
                       cfg.kd_feature_weight)
    return Method(cfg.act_bits, cfg.epochs)


@dataclass
class FinetuneResult:
    """The trained student (and teacher for kd), per-epoch history and what the run started from."""

    net: GraphNet
    config: FinetuneConfig
    hw: Accelerator
    history: pd.DataFrame
    calibration: list[np.ndarray]
    fingerprint: str
    teacher: GraphNet | None = None
    initial: dict[str, float] = field(default_factory=dict)  # val accuracies before training
    train_seconds: float = 0.0      # wall time of the epochs run by this call (no evaluation, no I/O)
    train_cpu_seconds: float = 0.0  # process CPU time of the same (all threads)


def graph_fingerprint(graph: Graph) -> str:
    """sha256 over the structure and weights: a resume must start from the same model."""
    h = hashlib.sha256()
    for node in graph.nodes:
        h.update(f"{node.name}|{node.op}|{node.inputs}|{sorted(node.attrs.items())}".encode())
        for t in (node.weight, node.bias):
            if t is not None:
                h.update(np.ascontiguousarray(t, dtype=np.float32).tobytes())
    return h.hexdigest()


def lr_at(cfg: FinetuneConfig, step: int, total_steps: int) -> float:
    """Cosine decay from cfg.lr to 0: a pure function of the step (nothing to checkpoint)."""
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


@torch.no_grad()
def accuracy(net: GraphNet, x: torch.Tensor, y: torch.Tensor, plan=FLOAT_PLAN) -> float:
    correct = 0
    for i in range(0, len(x), EVAL_BATCH):
        correct += int((net(x[i:i + EVAL_BATCH], plan).argmax(1) == y[i:i + EVAL_BATCH]).sum())
    return correct / max(1, len(x))


def _check_labelled(data: tuple[np.ndarray, np.ndarray | None], graph: Graph, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data
    if y is None:
        raise DataError(f"{what}: no labels: fine-tuning needs an array 'y' of class labels")
    x, y = check_arrays(x, y, what)
    check_input_shape(x, graph.input_shape, what)
    check_labels(y, model_classes(graph), what)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


@dataclass
class _Session:
    """What the epochs of one fine-tuning run share: data, nets, optimisers, the method, the history."""

    config: FinetuneConfig
    hw: Accelerator
    method: Method
    net: GraphNet
    teacher: GraphNet | None
    opt: torch.optim.Optimizer
    teacher_opt: torch.optim.Optimizer | None
    xt: torch.Tensor
    yt: torch.Tensor
    xv: torch.Tensor | None
    yv: torch.Tensor | None
    calibration: list[np.ndarray]
    fingerprint: str
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.xt) / self.config.batch_size)

    def calibrate(self, net: GraphNet, bits: list[int]) -> None:
        net.calibrate(self.calibration, self.hw, bits)


def _start(graph: Graph, train, val, config: FinetuneConfig, hw: Accelerator, train_name: str,
           val_name: str) -> _Session:
    """Check the data and options against the graph; build the nets, optimisers and calibration batches."""
    xt, yt = _check_labelled(train, graph, train_name)
    xv, yv = _check_labelled(val, graph, val_name) if val is not None else (None, None)
    if config.kd_features:
        unknown = [f for f in config.kd_features if f not in {n.name for n in graph.nodes}]
        if unknown:
            raise FinetuneError(f"--kd-features: no node(s) {unknown} in the graph; "
                                f"nodes are {[n.name for n in graph.nodes]}")
    method = make_method(config)
    net = GraphNet(graph)
    teacher = copy.deepcopy(net) if method.uses_teacher else None
    return _Session(
        config=config, hw=hw, method=method, net=net, teacher=teacher,
        opt=torch.optim.Adam(net.parameters(), lr=config.lr),
        teacher_opt=torch.optim.Adam(teacher.parameters(), lr=config.lr) if teacher is not None else None,
        xt=xt, yt=yt, xv=xv, yv=yv, calibration=calibration_batches(xt.numpy(), hw),
        fingerprint=graph_fingerprint(graph))


def _initial_accuracy(s: _Session) -> dict[str, float]:
    """Validation accuracies before training: FP32 and fake-quantized at the run's activation bits."""
    s.calibrate(s.net, [s.config.act_bits])
    if s.xv is None:
        return {}
    return {"val_acc_fp32": accuracy(s.net, s.xv, s.yv),
            "val_acc_fakequant": accuracy(s.net, s.xv, s.yv, s.net.full_plan(s.config.act_bits))}


def _resume(s: _Session, path: str | Path, log: Callable[[str], None]) -> None:
    """Continue from a checkpoint: nets, optimisers, history and the epoch count."""
    ckpt = load_checkpoint(path, s.config, s.fingerprint)
    try:
        s.net.load_state_dict(ckpt["student"])
        s.opt.load_state_dict(ckpt["opt"])
        if s.teacher is not None:
            s.teacher.load_state_dict(ckpt["teacher"])
            s.teacher_opt.load_state_dict(ckpt["teacher_opt"])
        s.history = list(ckpt["history"])
        s.start_epoch = int(ckpt["epoch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise FinetuneError(f"{path}: the checkpoint does not fit this model ({type(exc).__name__}: "
                            f"{one_line(exc)[:200]})") from None
    log(f"resumed from {path} after epoch {s.start_epoch}/{s.config.epochs}")


def _train_step(s: _Session, xb: torch.Tensor, yb: torch.Tensor, plan, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step of the student (and, for joint kd, the teacher); returns (loss, logits)."""
    for o in (s.opt, s.teacher_opt):
        if o is not None:
            for g in o.param_groups:
                g["lr"] = lr
    if s.teacher is None:
        logits = s.net(xb, plan)
        loss = F.cross_entropy(logits, yb)
    else:
        feats = tuple(s.config.kd_features)
        logits, fs = s.net(xb, plan, feats) if feats else (s.net(xb, plan), {})
        zt, ft = s.teacher(xb, FLOAT_PLAN, feats) if feats else (s.teacher(xb), {})
        loss, teacher_loss, _ = s.method.losses(logits, zt, yb, fs, ft)
        if s.config.kd_teacher == "joint":
            s.teacher_opt.zero_grad()
            teacher_loss.backward()
            s.teacher_opt.step()
    s.opt.zero_grad()
    loss.backward()
    s.opt.step()
    return loss, logits


def _train_epoch(s: _Session, epoch: int, progress: bool) -> dict:
    """Recalibrate, shuffle (seeded per epoch) and step through the training data once."""
    cfg, steps = s.config, s.steps_per_epoch
    total_steps = steps * cfg.epochs
    s.calibrate(s.net, s.method.act_bits_needed(epoch))
    perm = torch.from_numpy(np.random.default_rng([cfg.seed, _SHUFFLE, epoch]).permutation(len(s.xt)))
    s.net.train()
    loss_sum, correct = 0.0, 0
    batches = range(steps)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"epoch {epoch + 1}", unit="step", leave=False)
    for b in batches:
        step = epoch * steps + b
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        xb, yb = s.xt[idx], s.yt[idx]
        plan = s.method.plan(s.net, epoch, step, total_steps)
        loss, logits = _train_step(s, xb, yb, plan, lr_at(cfg, step, total_steps))
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        if progress:
            batches.set_postfix(loss=f"{loss.item():.4f}")
    return {"epoch": epoch + 1, "stage": s.method.stage(epoch), "loss": loss_sum / len(s.xt),
            "train_acc": correct / len(s.xt)}


def _validate(s: _Session, row: dict) -> None:
    """Add the epoch's validation accuracy (fake-quantized; kd: the teacher's too) to `row`."""
    if s.xv is None:
        return
    s.calibrate(s.net, [s.config.act_bits])
    row["val_acc"] = accuracy(s.net, s.xv, s.yv, s.net.full_plan(s.config.act_bits))
    if s.teacher is not None:
        row["teacher_val_acc"] = accuracy(s.teacher, s.xv, s.yv)


def _epoch_line(cfg: FinetuneConfig, row: dict) -> str:
    return (f"epoch {row['epoch']}/{cfg.epochs} [{row['stage']}] loss {row['loss']:.4f} "
            f"train acc {row['train_acc']:.2%}" + (f" val acc {row['val_acc']:.2%}" if "val_acc" in row else ""))


@contextlib.contextmanager
def _deterministic(seed: int):
    """torch's deterministic algorithms and a seeded generator for the duration of the training."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def finetune(
    model: Graph | str | Path,
    train: tuple[np.ndarray, np.ndarray | None],
    config: FinetuneConfig,
    *,
    hw: Accelerator | None = None,
    val: tuple[np.ndarray, np.ndarray | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    train_name: str = "train data",
    val_name: str = "val data",
) -> FinetuneResult:
    """Fine-tune `model` (file or lowered Graph) with quantization in the loop; see the module docstring.

    `train`/`val` are (x, y) as tersim.data.load_dataset returns them. `hw` supplies the calibration
    batch count and scale bits (default: the built-in hardware defaults); the config's group size,
    activation bits, ternarization method and first/last policy are folded into it. Returns the
    trained net; write it with `save_model`.
    """
    config.validate()
    hw = config.quantization().apply(hw or Accelerator())
    graph = model if isinstance(model, Graph) else import_model(model)
    s = _start(graph, train, val, config, hw, train_name, val_name)
    log = log or (lambda msg: None)
    initial = _initial_accuracy(s)
    if resume is not None:
        _resume(s, resume, log)

    train_seconds = train_cpu = 0.0
    epochs = range(s.start_epoch, config.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, total=config.epochs, initial=s.start_epoch, desc=f"finetune {config.method}",
                      unit="epoch")
    with _deterministic(config.seed):
        for epoch in epochs:
            t0, c0 = time.perf_counter(), time.process_time()
            row = _train_epoch(s, epoch, progress)
            train_seconds += time.perf_counter() - t0
            train_cpu += time.process_time() - c0
            row["seconds"] = time.perf_counter() - t0
            _validate(s, row)
            s.history.append(row)
            if progress:
                epochs.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['train_acc']:.2%}",
                                   **({"val": f"{row['val_acc']:.2%}"} if "val_acc" in row else {}))
            log(_epoch_line(config, row))
            if checkpoint_dir is not None:
                save_checkpoint(Path(checkpoint_dir), epoch + 1, config, s.fingerprint, s.net, s.opt, s.teacher,
                                s.teacher_opt, s.history)
    s.calibrate(s.net, [config.act_bits])
    s.net.eval()
    return FinetuneResult(net=s.net, config=config, hw=hw, history=pd.DataFrame(s.history),
                          calibration=s.calibration, fingerprint=s.fingerprint, teacher=s.teacher, initial=initial,
                          train_seconds=train_seconds, train_cpu_seconds=train_cpu)


# ---------------------------------------------------------------------------------------- checkpoints

def _config_dict(cfg: FinetuneConfig) -> dict:
    d = asdict(cfg)
    d["kd_features"] = list(d["kd_features"])
    return d


def save_checkpoint(directory: Path, epoch: int, cfg: FinetuneConfig, fingerprint: str, net: GraphNet,
                    opt: torch.optim.Optimizer, teacher: GraphNet | None, teacher_opt: torch.optim.Optimizer | None,
                    history: list[dict]) -> Path:
    """DIR/epoch_NNN.pt after each epoch; only the newest KEEP_CHECKPOINTS are kept."""
    state = {"format": CKPT_FORMAT, "epoch": epoch, "config": _config_dict(cfg), "fingerprint": fingerprint,
             "student": net.state_dict(), "opt": opt.state_dict(), "history": history}
    if teacher is not None:
        state["teacher"], state["teacher_opt"] = teacher.state_dict(), teacher_opt.state_dict()
    path = directory / f"epoch_{epoch:03d}.pt"
    write_bytes_atomic(path, lambda f: torch.save(state, f))
    for old in sorted(directory.glob("epoch_*.pt"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


CKPT_KEYS = ("format", "epoch", "config", "fingerprint", "student", "opt", "history")


def load_checkpoint(path: str | Path, cfg: FinetuneConfig, fingerprint: str) -> dict:
    """Read a checkpoint (a file, or a directory: its newest epoch_NNN.pt) and check it matches this run."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("epoch_*.pt"))
        if not found:
            raise FinetuneError(f"{path}: no epoch_NNN.pt checkpoint in this directory")
        path = found[-1]
    if not path.is_file():
        raise FinetuneError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FinetuneError(f"{path}: cannot read checkpoint: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise FinetuneError(f"{path}: not a tersim finetune checkpoint")
    missing = [k for k in CKPT_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["epoch"], int):
        raise FinetuneError(f"{path}: a damaged tersim finetune checkpoint (missing or malformed: "
                            f"{', '.join(missing) or 'config/epoch'})")
    if ckpt["fingerprint"] != fingerprint:
        raise FinetuneError(f"{path}: checkpoint was made from a different model file")
    saved, now = ckpt["config"], _config_dict(cfg)
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise FinetuneError(f"{path}: options differ from the checkpoint's ({detail}); resume with the same options")
    return ckpt


# ---------------------------------------------------------------------------------------- output model

def export_program(net: GraphNet) -> torch.export.ExportedProgram:
    """torch.export of the float shadow-weight net; the batch dimension is dynamic (any batch size runs)."""
    example = torch.zeros((2, *net.graph.input_shape))  # batch 2: export would specialise a batch of 1
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(FloatExport(net).eval(), (example,), dynamic_shapes=({0: batch},))


def _datapath_params(graph: Graph, result: FinetuneResult) -> list[tuple]:
    cfg = result.config
    q = quantize_graph(graph, result.calibration, result.hw)
    return [(layer.node.op, layer.weight_kind, layer.codes, layer.alpha_q, layer.alpha_frac)
            for layer in q.layers.values() if layer.weight_kind is not None]


def check_round_trip(result: FinetuneResult, path: str | Path) -> None:
    """The written file must re-import to the trained weights and ternarize to the trained codes/alphas."""
    trained = _datapath_params(result.net.to_graph(), result)
    written = _datapath_params(import_model(path), result)
    same = len(trained) == len(written) and all(
        a[0] == b[0] and a[1] == b[1] and a[4] == b[4] and np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])
        for a, b in zip(trained, written))
    if not same:
        raise FinetuneError(f"{path}: the written model does not quantize to the trained codes/alphas")


def metadata(result: FinetuneResult) -> dict:
    cfg = result.config
    q = result.net.qgraphs[cfg.act_bits]
    return {
        "tersim_finetune": 1, "config": _config_dict(cfg), "hw": result.hw.name,
        "scale_bits": result.hw.group_scaling.scale_bits, "source_fingerprint": result.fingerprint,
        "act_fracs": {name: layer.out.frac for name, layer in q.layers.items()},
        "initial": result.initial, "history": result.history.to_dict(orient="records"),
    }


def save_model(result: FinetuneResult, path: str | Path) -> Path:
    """Write the torch.export archive (metadata in `tersim_finetune.json`) atomically, then check it."""
    path = Path(path)
    ep = export_program(result.net)
    extra = {METADATA_FILE: json.dumps(metadata(result), indent=1, default=float)}
    write_bytes_atomic(path, lambda f: torch.export.save(ep, f, extra_files=extra))
    check_round_trip(result, path)
    return path


def read_metadata(path: str | Path) -> dict | None:
    """The fine-tuning metadata of a model file written by save_model (None for other files)."""
    import zipfile

    from tersim.frontend.pt2_guard import MAX_JSON_BYTES, read_prefix

    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(METADATA_FILE)]
        return json.loads(read_prefix(zf, names[0], MAX_JSON_BYTES)) if names else None


__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "save_model", "check_round_trip", "export_program",
           "read_metadata", "load_checkpoint", "save_checkpoint", "make_method"]
