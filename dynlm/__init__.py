"""dynlm: a dynamical language model with three levels of memory.

- short-term: the hidden state (h, c) of the AWD-LSTM — `model/awd_lstm.py` (`LMState`), read through `model/lstm.py`;
- medium-term: per-stream dynamic weights rewritten by an update rule — `dynamic/` (`fast_weights.py`, `segment.py`,
  `dyneval.py`, `meta_learner.py`);
- long-term: the static weights θ0 learned on the corpus — `model/static_weights.py`, trained by `train/lm_trainer.py`.

Layers import only downwards: config/cache/dist → data → model → dynamic → run → train | eval → scripts.
"""
__version__ = "0.1.0"
