"""Krause et al.'s dynamic evaluation as an update rule: the hand-designed baseline of the medium-term memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..kernels.factored_gradient import FactoredGradient, FactoredStep
from ..kernels.krause_dense import krause_dense_step
from ..maths.directions import delta_forget_factors, momentum_direction, momentum_step, whiten, whitening
from ..maths.krause import krause_flush, krause_gain
from .grad_stats import GradStats
from .registry import RuleConfigError, register_rule
from .rule_base import RuleOutput, StatsRule, buffer_name


@dataclass
class KrauseConfig:
    """Krause et al.'s (2017) hyperparameters: of his rule, and the starting point of the rules learned from it.
    Defaults are his dynamiceval.py's (its new hyperparameter scale; docs/dyneval.md "Hyperparameter scales")."""

    eta: float = 0.00005  # η, the step size
    lam: float = 0.002  # λ (decay toward the static weights)
    eps: float = 0.00002  # ε in g / (rms + ε)

    ranges: ClassVar[Dict[str, Tuple]] = {"eta": (0.0, None, False), "lam": (0.0, None, True),
                                          "eps": (0.0, None, False)}


@dataclass
class DirectionsConfig(KrauseConfig):
    """Update directions beyond Krause's (issue #25, `maths/directions.py`), options of his rule and of the cheap
    rule (not of the gated one, whose own `momentum` is a learned gate); each at 0 leaves his step bit for bit."""

    momentum_beta: float = 0.0  # β: the step accumulates across segments, m' = β m + gain ⊙ g, θ' −= m'; 0: off
    delta_decay: float = 0.0  # μ: a matrix forgets μ of its memory along the inputs it just read; 0: off
    whiten: bool = False  # a matrix steps along G (Â + εI)⁻¹, Â its inputs' second moment (mean eigenvalue 1)
    whiten_eps: float = 0.1  # ε of that whitening: the most a rare input direction is stepped up is 1/ε

    ranges: ClassVar[Dict[str, Tuple]] = {**KrauseConfig.ranges, "momentum_beta": (0.0, 1.0, True, False),
                                          "delta_decay": (0.0, 1.0, True, True), "whiten_eps": (0.0, None, False)}


# every direction off: Krause's rule (callers that build a rule by hand and want his)
DIRECTIONS_OFF = {"momentum_beta": 0.0, "delta_decay": 0.0, "whiten": False, "whiten_eps": 0.1}
MOMENTUM = "momentum/"  # learner state: the momentum of tensor n, `[B, *shape]`, is learner[MOMENTUM + n]


@dataclass
class DynEvalConfig(DirectionsConfig):
    name: str = "dyneval"  # Krause's fixed rule


@register_rule("dyneval", config=DynEvalConfig, learned=False)
class DynEvalRule(StatsRule):
    """Krause et al. (2017), as his `dynamiceval.py` computes it. No learned parameters.

        θ' = θ − η g / (rms + ε) + λ · decrate · (θ0 − θ),   decrate = rms / decay_norm, capped at 1/λ

    in the one form every path computes (`maths/krause.py:krause_step`, s = 1):
    θ' = θ + (flush ⊙ θ0 − flush ⊙ θ) − gain ⊙ g with flush = min(λ·decrate, 1) and gain = η / (rms + ε) computed
    once, and flush ⊙ θ0 once per reading of a constant θ0 (`FrozenWeights`). Reading without a graph, the
    gradients of the tied table and the LSTM matrices come factored (`FactoredGradient`) and the step is taken
    without ever forming them (`factored_step`, a `FactoredStep` this rule owns); the others take
    `krause_dense_step`.

    Options (`DirectionsConfig`, off at 0; `maths/directions.py`): `momentum_beta` carries the step across
    segments in the learner state; `delta_decay` takes from each matrix `[B, R, C]` its memory along the inputs it
    read (a factored gradient's `u`, else the `inputs` reading hands over: `takes_inputs`). For the tied table
    those are the decoder's inputs h_t: every row forgets along them. Its lookup, a one-hot input on the other
    side, is not decayed: that would erase the rows of the words just read, which the step has just written.
    `whiten` steps each matrix along G (Â + εI)⁻¹ (`whiten_eps` ε), Â from the statistics' input moments; for the
    tied table, those of the decoder's input, applied to its whole gradient (decoder and lookup rows alike: both
    live in the embedding space).
    """

    takes_factored_gradients = True

    def __init__(self, names: Sequence[str], stats: GradStats, *, eta: float, lam: float, eps: float,
                 momentum_beta: float, delta_decay: float, whiten: bool, whiten_eps: float):
        self.whiten_eps = whiten_eps if whiten else None  # before the base's `use_stats`, which reads it
        super().__init__(names, stats, eta=eta, lam=lam, eps=eps)
        self.momentum_beta, self.delta_decay = momentum_beta, delta_decay
        self.takes_inputs = delta_decay > 0  # reading with a graph then records them; without, the factors carry them
        self.factored_step = FactoredStep()  # what it compiled, and whether compiling failed

    def _extra_buffers(self, n: str, rms: Tensor) -> None:
        self.register_buffer("flush__" + buffer_name(n), krause_flush(rms, self.decay_norm, self.lam),
                             persistent=False)
        self.register_buffer("gain__" + buffer_name(n), krause_gain(rms, self.eta, self.eps), persistent=False)

    def _rule_constants(self, stats: GradStats) -> None:
        self.whitened_names = [] if self.whiten_eps is None else self._whitening_buffers(stats, self.whiten_eps)

    def _whitening_buffers(self, stats: GradStats, eps: float) -> List[str]:
        matrices = [n for n in self.names if stats.v[n].dim() == 2]
        missing = [n for n in matrices if n not in stats.input_moments]
        if missing:
            raise RuleConfigError(
                f"rule.whiten needs the input moments of {missing}, which gradient statistics saved before whitening "
                "lack: measure them again (delete 'grad_stats' from the stage-2 checkpoint, or evaluate its stage-1 "
                "checkpoint), or leave whiten off")
        for n in matrices:  # derived from the statistics, as rms: not part of φ's state dict
            inverse = whitening(stats.input_moments[n].double(), eps).to(stats.v[n].dtype)
            self.register_buffer("whiten__" + buffer_name(n), inverse, persistent=False)
        return matrices

    def whitened(self, n: str, g):
        """G (Â + εI)⁻¹ of a matrix when `whiten` is on (a factored G stays factored); else G."""
        if n not in self.whitened_names:
            return g
        inverse = self.get_buffer("whiten__" + buffer_name(n))
        return g.times(inverse) if isinstance(g, FactoredGradient) else whiten(g, inverse)

    def init_learner_state(self, fast: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        if not self.momentum_beta:
            return {}
        return {MOMENTUM + n: torch.zeros_like(t) for n, t in fast.items()}

    def krause_update(self, n: str, theta: Tensor, theta0: Mapping[str, Tensor], g,
                      s_decay: Optional[Tensor] = None, s_step: Optional[Tensor] = None) -> Tensor:
        """Krause's step of tensor `n`, scaled per stream by `s_* [B]` (None: 1), whatever form g comes in."""
        b = buffer_name(n)
        flush, gain = getattr(self, "flush__" + b), getattr(self, "gain__" + b)
        if isinstance(g, FactoredGradient):
            return self.factored_step(theta, flush, self.anchored(n, theta0), gain, g, s_decay, s_step)
        return krause_dense_step(theta, self.anchored(n, theta0), flush, gain, g, s_decay, s_step)

    def momentum_update(self, n: str, theta: Tensor, theta0: Mapping[str, Tensor], g, m: Tensor,
                        s_decay: Optional[Tensor] = None, s_step: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """`(θ', m')`: Krause's decay with the momentum m' = β m + s_step · gain ⊙ g as the step. A factored g is
        formed here: m is a dense per-stream tensor anyway, and the step reads it in full."""
        b = buffer_name(n)
        flush, gain = getattr(self, "flush__" + b), getattr(self, "gain__" + b)
        dense = g.dense() if isinstance(g, FactoredGradient) else g
        view = (-1,) + (1,) * (theta.dim() - 1)
        step = gain * dense if s_step is None else s_step.view(view) * (gain * dense)
        m = momentum_direction(m, step, self.momentum_beta)
        return momentum_step(theta, self.anchored(n, theta0), flush, m,
                             1.0 if s_decay is None else s_decay.view(view)), m

    def forget_factors(self, n: str, theta: Tensor, theta0: Mapping[str, Tensor], g,
                       inputs: Optional[Mapping[str, Tensor]]) -> Optional[Tuple[Tensor, Tensor]]:
        """The delta-rule decay of matrix `n` as `(A, K)`, θ' −= A K (None: off, or not a matrix)."""
        if not self.delta_decay or theta.dim() != 3:
            return None
        u = g.u if isinstance(g, FactoredGradient) else (inputs or {}).get(n)
        if u is None:
            raise RuntimeError(f"rule.delta_decay: the reading handed over no inputs of the matrix {n}")
        return delta_forget_factors(theta, theta0[n], u.to(theta.dtype), self.delta_decay)

    def update_all(self, fast, grads, theta0, learner_state, s_decay: Optional[Tensor] = None,
                   s_step: Optional[Tensor] = None,
                   inputs: Optional[Mapping[str, Tensor]] = None) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Every tensor's step, `s_* [B, tensors]` the per-stream scales (None: 1), `inputs` what the matrices
        multiplied where their gradients are not factored: the new weights and the learner state with the new
        momenta (when `momentum_beta` > 0)."""
        new, state = {}, dict(learner_state)
        for k, n in enumerate(self.names):
            sd, ss = (None if s is None else s[:, k] for s in (s_decay, s_step))
            forget = self.forget_factors(n, fast[n], theta0, grads[n], inputs)  # before a step that may write into θ
            g = self.whitened(n, grads[n])
            if self.momentum_beta:
                m = state.get(MOMENTUM + n)
                m = torch.zeros_like(fast[n]) if m is None else m
                new[n], state[MOMENTUM + n] = self.momentum_update(n, fast[n], theta0, g, m, sd, ss)
            else:
                new[n] = self.krause_update(n, fast[n], theta0, g, sd, ss)
            if forget is not None:  # without a graph, into the step's new tensor (or θ's memory, this reading's)
                new[n] = (torch.baddbmm(new[n], *forget, alpha=-1.0) if torch.is_grad_enabled()
                          else new[n].baddbmm_(*forget, alpha=-1.0))
        return new, state

    def forward(self, fast, grads, theta0, seg_loss, learner_state, inputs=None) -> RuleOutput:
        new, state = self.update_all(fast, grads, theta0, learner_state, inputs=inputs)
        return new, state, {}


__all__ = ["DIRECTIONS_OFF", "DirectionsConfig", "DynEvalConfig", "DynEvalRule", "KrauseConfig", "MOMENTUM"]
