"""Probe: would per-row (per-word) step sizes for the tied table beat Krause's rule?

Run from the repository root (one thread, one setting per process):

    OMP_NUM_THREADS=1 python docs/results/small-adam/probes/row_scale.py --seen 1.0 --rho 0.998 --out DIR

Every parameter adapts with tuned dyneval (η 7e-5, λ 1e-3; the statistics cached for the checkpoint) on the first 10
valid articles, the standard protocol. The table's and the decoder bias's step is scaled per row by

    r[v] = table_scale · (1 + seen · m[v]),   m ← ρ · m, then m[x] = 1 for every word x read in the segment

(m: a decaying "this word was read lately" memory, half-life log 0.5 / log ρ segments), and the LSTM tensors'
step by `lstm_scale`. seen = 0 with both scales 1 is dyneval exactly. A hand-set rule, not a learned one: it
bounds what a learned per-row scale from this feature could gain before one is built.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from dynlm.dynamic.dyneval import DynEvalRule
from dynlm.eval.config import register_eval_configs
from dynlm.eval.inputs import load_inputs
from dynlm.eval.methods import ensure_grad_stats, run_methods
from dynlm.kernels.factored_gradient import FactoredGradient, TableGradient

CONF = Path(__file__).resolve().parents[4] / "conf"


class RowScaledDynEval(DynEvalRule):
    def configure(self, seen: float, rho: float, table_scale: float, lstm_scale: float, vocab: int):
        self.seen, self.rho, self.table_scale, self.lstm_scale, self.vocab = seen, rho, table_scale, lstm_scale, vocab

    def init_learner_state(self, fast):
        like = next(iter(fast.values()))
        return {"recent": torch.zeros(1, self.vocab, dtype=like.dtype)}

    def forward(self, fast, grads, theta0, seg_loss, learner_state):
        table = grads["embedding.weight"]
        assert isinstance(table, TableGradient)
        tokens = table.tokens  # [L, B]
        recent = learner_state["recent"].expand(tokens.shape[1], -1) * self.rho
        recent = recent.scatter(1, tokens.t(), 1.0)
        r = self.table_scale * (1.0 + self.seen * recent)  # [B, V]
        table.d.mul_(r.unsqueeze(-1))
        table.d_embedded.mul_(torch.gather(r, 1, tokens.t()).t().unsqueeze(-1))
        scaled = dict(grads)
        scaled["decoder_bias"] = grads["decoder_bias"] * r
        for n in self.names:
            if n.startswith("layers.") and self.lstm_scale != 1.0:
                g = grads[n]
                if isinstance(g, FactoredGradient):  # W_ih and W_hh share their d: scaled out of place
                    g.d = g.d * self.lstm_scale
                else:
                    scaled[n] = g * self.lstm_scale
        new, _, diag = super().forward(fast, scaled, theta0, seg_loss, learner_state)
        return new, {**learner_state, "recent": recent}, diag


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seen", type=float, default=0.0)
    p.add_argument("--rho", type=float, default=0.998)
    p.add_argument("--table-scale", type=float, default=1.0)
    p.add_argument("--lstm-scale", type=float, default=1.0)
    p.add_argument("--articles", type=int, default=10)
    p.add_argument("--checkpoint", default="runs/small-lm-ho/checkpoints/best.pt")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    register_eval_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", [f"checkpoint={a.checkpoint}", "split=valid", "methods=[dyneval]",
                          f"eval.max_articles={a.articles}", "eval.dyneval_eta=0.00007", "eval.dyneval_lam=0.001",
                          "eval.dynamic=[*]", "eval.progress_bar=false"])
    inp = load_inputs(cfg)
    ensure_grad_stats(inp, cfg.eval.gradstat_tokens, cfg.eval.gradstat_streams, True)
    krause = inp.fixed_rules["dyneval"]
    rule = RowScaledDynEval(inp.names, inp.stats, eta=krause.eta, lam=krause.lam, eps=krause.eps)
    rule.configure(a.seen, a.rho, a.table_scale, a.lstm_scale, inp.model.vocab_size)
    inp.methods = ["dyneval"]
    started = time.time()
    losses, _ = run_methods(inp, False, False, rules={"dyneval": rule})
    nll = losses["dyneval"].double()
    starts = inp.article_starts.tolist() + [inp.num_tokens]
    result = {**vars(a), "tokens": inp.num_tokens, "ppl": math.exp(float(nll.mean())), "seconds": time.time() - started,
              "article_ppl": [math.exp(float(nll[s:e].mean())) for s, e in zip(starts[:-1], starts[1:])]}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"seen{a.seen}-rho{a.rho}-table{a.table_scale}-lstm{a.lstm_scale}.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print(name, f"{result['ppl']:.2f}", f"{result['seconds']:.0f}s")


if __name__ == "__main__":
    main()
