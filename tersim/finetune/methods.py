"""Fine-tuning methods: which quantizers each training step turns on, and the KD loss.

A method only hands out `QuantPlan`s (graph_module.py) per step; the training loop is shared
(train.py). All of them end fully quantized exactly as `tersim run` quantizes (FGQ ternary weights,
int8 first/last layers, `act_bits` activations), so the weights written are trained for that datapath.
The methods follow Zhuang et al., "Towards effective low-bitwidth CNNs" (CVPR 2018) / "Effective
training of CNNs with low-bitwidth weights and activations" (TPAMI); docs/FINETUNE_PLAN.md section 3.

ste (default)
    Every weight and activation quantizer on from the first step. Straight-through estimators:
    identity gradient through the FGQ ternarizer, clipped identity through activation quantizers.
    No hyper-parameters of its own.

progressive (`--schedule`, default `w8,w4,wt,wt+a<act_bits>`; with 4-bit activations
`w8,w4,wt,wt+a8,wt+a4`)
    Stages over the epochs, split as evenly as possible (stage s covers epochs
    [floor(s*E/S), floor((s+1)*E/S))). A stage is `+`-joined parts: `w8`/`w4`/... k-bit symmetric
    weights on the FGQ groups (`ste_group_kbit`), `wt` FGQ ternary weights, `a8`/`a4` activations at
    that width; a part left out runs in float. The default lowers the weight bit-width 8 -> 4 ->
    ternary with float activations, then turns activations on: weights first, then activations.
    The last stage must be `wt+a<act_bits>` (what is saved must be trained for the datapath).
    int8 first/last layers are int8 whenever weights are quantized.

stochastic (`--sp-start 0.5`, `--sp-full 0.2`)
    Stochastic precision: each step quantizes a random subset of the weighted layers (its weights
    and its output activation); the others run in float. The fraction of layers quantized rises
    linearly with the step from `sp_start` to 1, reached when a fraction `sp_full` of the steps is
    left, so the final steps train the fully quantized net. k = ceil(ratio * L) of the L layers,
    drawn uniformly without replacement from `numpy.random.default_rng([seed, step])` (the same
    subsets on a rerun or a resume). Quantizers not tied to a weighted layer (network input,
    add / average-pool / concat outputs) are always on.

kd (`--kd-lambda 1.0`, `--kd-temperature 2.0`, `--kd-features NODE,...`, `--kd-feature-weight 1.0`,
    `--kd-teacher joint`)
    Guided joint knowledge distillation. The teacher is an FP32 copy of the starting model (all
    quantizers off) trained alongside the student with its own Adam optimizer (same lr schedule).
    student loss = CE(z_s, y) + lambda * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))
                   + mu * sum_f MSE(f_s, f_t) / mean(f_t^2)
    teacher loss = CE(z_t, y) + lambda * T^2 * KL(softmax(z_s/T) || softmax(z_t/T))
    (the other side's outputs detached: guidance both ways). `--kd-teacher frozen` keeps the teacher
    fixed at the starting FP32 model (classic distillation) instead. Features f are IR node outputs named by
    `--kd-features` (e.g. the residual-block adds); the feature term is off when none are named.
    The student is fully quantized from the start (as `ste`); only the student is saved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tersim.errors import FinetuneError
from tersim.finetune import METHODS  # noqa: F401 (the names are defined without torch; re-exported here)
from tersim.finetune.graph_module import GraphNet, QuantPlan


class Method:
    """Plain STE; the base the others override. `plan` is called once per training step."""

    name = "ste"
    uses_teacher = False

    def __init__(self, act_bits: int, epochs: int) -> None:
        self.act_bits = act_bits
        self.epochs = epochs

    def act_bits_needed(self, epoch: int) -> list[int]:
        """Activation widths to calibrate formats for before this epoch (always incl. the final one)."""
        return [self.act_bits]

    def stage(self, epoch: int) -> str:
        """A short label for the progress bar."""
        return f"wt+a{self.act_bits}"

    def plan(self, net: GraphNet, epoch: int, step: int, total_steps: int) -> QuantPlan:
        return net.full_plan(self.act_bits)


# ---------------------------------------------------------------------------------------- progressive

@dataclass(frozen=True)
class Stage:
    weights: str | int | None  # None float, "t" ternary (datapath), k-bit int
    act_bits: int | None       # None: float activations

    def label(self) -> str:
        parts = ([f"w{self.weights}"] if self.weights is not None else []) + \
                ([f"a{self.act_bits}"] if self.act_bits is not None else [])
        return "+".join(parts) or "float"


def default_schedule(act_bits: int) -> str:
    return "w8,w4,wt,wt+a8" + (f",wt+a{act_bits}" if act_bits != 8 else "")


def parse_schedule(text: str, act_bits: int) -> list[Stage]:
    """'w8,w4,wt,wt+a8' -> stages; the last must be 'wt+a<act_bits>'."""
    stages = []
    for token in text.split(","):
        weights, bits = None, None
        for part in filter(None, token.strip().split("+")):
            kind, value = part[0], part[1:]
            if kind == "w" and value == "t":
                weights = "t"
            elif kind == "w" and value.isdigit() and 3 <= int(value) <= 16:
                weights = int(value)
            elif kind == "a" and value.isdigit() and 2 <= int(value) <= 16:
                bits = int(value)
            else:
                raise FinetuneError(f"--schedule: bad stage part '{part}' in '{text}' "
                                    "(want w<3..16>, wt or a<2..16>, joined by '+', e.g. w8,w4,wt,wt+a8)")
        stages.append(Stage(weights, bits))
    if not stages or stages[-1] != Stage("t", act_bits):
        raise FinetuneError(f"--schedule: the last stage of '{text}' must be 'wt+a{act_bits}' "
                            "(the saved model is trained for the integer datapath)")
    return stages


class Progressive(Method):
    name = "progressive"

    def __init__(self, act_bits: int, epochs: int, schedule: str | None = None) -> None:
        super().__init__(act_bits, epochs)
        self.schedule = schedule or default_schedule(act_bits)
        self.stages = parse_schedule(self.schedule, act_bits)

    def stage_index(self, epoch: int) -> int:
        n = len(self.stages)
        return max(s for s in range(n) if s * self.epochs // n <= epoch)

    def current(self, epoch: int) -> Stage:
        return self.stages[self.stage_index(epoch)]

    def act_bits_needed(self, epoch: int) -> list[int]:
        bits = self.current(epoch).act_bits
        return [self.act_bits] + ([bits] if bits is not None else [])

    def stage(self, epoch: int) -> str:
        return self.current(epoch).label()

    def plan(self, net: GraphNet, epoch: int, step: int, total_steps: int) -> QuantPlan:
        st = self.current(epoch)
        mode = None if st.weights is None else ("datapath" if st.weights == "t" else st.weights)
        weights = {name: mode for name in net.weighted_names()}
        acts = frozenset(net.act_points()) if st.act_bits is not None else frozenset()
        return QuantPlan(weights, acts, st.act_bits or self.act_bits)


# ---------------------------------------------------------------------------------------- stochastic

class Stochastic(Method):
    name = "stochastic"

    def __init__(self, act_bits: int, epochs: int, seed: int, start: float = 0.5, full: float = 0.2) -> None:
        super().__init__(act_bits, epochs)
        if not 0.0 <= start <= 1.0:
            raise FinetuneError(f"--sp-start must be in [0, 1], got {start}")
        if not 0.0 <= full < 1.0:
            raise FinetuneError(f"--sp-full must be in [0, 1), got {full}")
        self.seed, self.start, self.full = seed, start, full

    def ratio(self, step: int, total_steps: int) -> float:
        """Fraction of weighted layers quantized at `step`: linear from `start` to 1 at (1 - full) of the run."""
        ramp = max(1.0, (1.0 - self.full) * total_steps)
        return min(1.0, self.start + (1.0 - self.start) * step / ramp)

    def subset(self, layers: list[str], step: int, total_steps: int) -> list[str]:
        k = min(len(layers), max(1, math.ceil(self.ratio(step, total_steps) * len(layers) - 1e-9)))
        rng = np.random.default_rng([self.seed, step])
        return [layers[i] for i in sorted(rng.choice(len(layers), size=k, replace=False))]

    def stage(self, epoch: int) -> str:
        return "sp"

    def plan(self, net: GraphNet, epoch: int, step: int, total_steps: int) -> QuantPlan:
        layers = net.weighted_names()
        chosen = set(self.subset(layers, step, total_steps))
        weights = {name: ("datapath" if name in chosen else None) for name in layers}
        acts = frozenset(p for p in net.act_points() if p not in layers or p in chosen)
        return QuantPlan(weights, acts, self.act_bits)


# ---------------------------------------------------------------------------------------- kd

class JointKD(Method):
    name = "kd"
    uses_teacher = True

    def __init__(self, act_bits: int, epochs: int, lam: float = 1.0, temperature: float = 2.0,
                 features: tuple[str, ...] = (), feature_weight: float = 1.0) -> None:
        super().__init__(act_bits, epochs)
        if temperature <= 0:
            raise FinetuneError(f"--kd-temperature must be > 0, got {temperature}")
        self.lam, self.temperature = lam, temperature
        self.features, self.feature_weight = tuple(features), feature_weight

    def losses(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, fs: dict[str, torch.Tensor],
               ft: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(student loss, teacher loss, parts for logging); each side's targets are detached."""
        t = self.temperature
        kd_s = F.kl_div(F.log_softmax(zs / t, 1), F.softmax(zt.detach() / t, 1), reduction="batchmean") * t * t
        kd_t = F.kl_div(F.log_softmax(zt / t, 1), F.softmax(zs.detach() / t, 1), reduction="batchmean") * t * t
        feat = zs.new_zeros(())
        for name in self.features:
            target = ft[name].detach()
            feat = feat + F.mse_loss(fs[name], target) / target.pow(2).mean().clamp_min(1e-12)
        ce_s, ce_t = F.cross_entropy(zs, y), F.cross_entropy(zt, y)
        student = ce_s + self.lam * kd_s + self.feature_weight * feat
        teacher = ce_t + self.lam * kd_t
        parts = {"ce": ce_s.item(), "kd": kd_s.item(), "feat": feat.item(), "teacher_ce": ce_t.item()}
        return student, teacher, parts
