"""AWD-LSTM batching for stage-1 LM training and stream evaluation (time-major tensors)."""
from __future__ import annotations

import math

import torch


def batchify(ids: torch.Tensor, num_streams: int) -> torch.Tensor:
    """[N] -> [N // B, B]: column b is the b-th contiguous chunk of the stream; the tail is dropped.

    Works for any per-token tensor (ids, Split.article_id, Split.position) with the same layout.
    """
    if num_streams < 1:
        raise ValueError(f"num_streams must be >= 1, got {num_streams}")
    n = ids.numel() // num_streams
    if n == 0:
        raise ValueError(f"{ids.numel()} tokens cannot fill {num_streams} streams")
    return ids[: n * num_streams].view(num_streams, n).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x = source[i : i+T], y = source[i+1 : i+1+T] (next tokens), T = min(seq_len, len(source)-1-i)."""
    t = min(seq_len, source.size(0) - 1 - i)
    if t < 1:
        raise IndexError(f"no batch at i={i}: the source has {source.size(0)} rows")
    return source[i : i + t], source[i + 1 : i + 1 + t]


def sample_seq_len(bptt: int, generator: torch.Generator, max_extra: int = 40) -> int:
    """AWD-LSTM variable BPTT: mean bptt w.p. 0.95 else bptt/2, then normal(mean, 5), in [5, bptt+max_extra].

    Draws only from `generator`, so the sequence of lengths is reproducible (and resumable by
    saving the generator state). The trainer should scale the lr by seq_len / bptt, as AWD does.
    """
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    mean = bptt if torch.rand((), generator=generator).item() < 0.95 else bptt / 2
    seq_len = int(mean + 5 * torch.randn((), generator=generator).item())
    return min(max(5, seq_len), bptt + max_extra)


def expected_seq_len(bptt: int, max_extra: int = 40) -> float:
    """The mean of `sample_seq_len(bptt, ...)`, exactly (from the normal CDF): how many time steps a stage-1 step
    reads on average, for the number of steps an epoch takes."""
    hi = bptt + max_extra

    def below(mean: float, k: float) -> float:  # P(mean + 5 z < k)
        return 0.5 * (1.0 + math.erf((k - mean) / (5.0 * math.sqrt(2.0))))

    total = 0.0
    for weight, mean in ((0.95, float(bptt)), (0.05, bptt / 2)):
        # int() of a value below 6 (negative ones included) is clipped to 5; from hi up, to hi
        e = 5 * below(mean, 6) + hi * (1.0 - below(mean, hi))
        e += sum(k * (below(mean, k + 1) - below(mean, k)) for k in range(6, hi))
        total += weight * e
    return total
