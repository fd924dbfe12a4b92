"""The reference maths of each operation, written once as plain differentiable tensor ops: Krause's step
(`krause.py`), the gated step (`gated.py`) and the LSTM layer (`lstm.py`). The fast kernels (`dynlm/kernels/`)
compute the same expressions, the compiled ones by calling these functions; the equivalence tests compare against
them."""
