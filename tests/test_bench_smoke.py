"""`scripts/bench.py --quick` prints one parseable JSON line per figure with its keys (no ratio asserted)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["lstm_fwd_bwd", "lm_train", "meta_train", "joint_train", "adaptive_eval", "grad_stats", "dyneval", "memory"]
COMMON = {"figure", "ratio", "target", "met", "mode", "reps", "env", "sizes"}
KEYS = {
    "lstm_fwd_bwd": {"per_stream_ms", "nn_lstm_ms", "per_stream_fwd_nograd_ms", "autograd_loop_ms"},
    "lm_train": {"awd_tok_s", "plain_tok_s", "awd_noreg_tok_s", "ratio_noreg", "compared"},
    "meta_train": {"meta_ms_per_token", "stage1_ms_per_token", "meta_window_ms", "coordinates_per_token"},
    "joint_train": {"bptt_first_ratio", "second_order_ratio", "second_order_met", "first_order_ms_per_token",
                    "bptt_first_ms_per_token", "bptt_second_ms_per_token", "stage1_ms_per_token",
                    "memory_ratio_first_order", "memory_ratio_bptt_first", "memory_ratio_bptt_second", "memory_met",
                    "compared"},
    "adaptive_eval": {"ratio_dyneval", "static_ms_per_token", "meta_ms_per_token", "dyneval_ms_per_token",
                      "cheap_ms_per_token", "cheap_vs_dyneval", "cheap_vs_dyneval_target", "cheap_vs_dyneval_met",
                      "cheap_vs_dyneval_all", "cheap_vs_dyneval_all_met"},
    "grad_stats": {"stats_s", "static_s", "tokens"},
    "dyneval": {"ratio_lstm_only", "all_ms_per_token", "lstm_ms_per_token", "copy_bandwidth_gb_s",
                "all_bound_ms_per_token", "lstm_bound_ms_per_token", "all_vs_bound", "lstm_vs_bound",
                "multi_stream_speedup", "multi_stream_speedup_lstm", "streams", "all_moved_mb_per_segment",
                "lstm_moved_mb_per_segment"},
    "memory": {"ckpt_vs_plain", "method", "extrapolated"},
}


def _run(*args):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_quick_bench_prints_every_figure_with_its_keys():
    records = _run("--quick")
    assert [r["figure"] for r in records] == FIGURES
    for r in records:
        missing = (COMMON | KEYS[r["figure"]]) - set(r)
        assert not missing, (r["figure"], missing)
        assert isinstance(r["ratio"], (int, float)) and isinstance(r["met"], bool)
        assert r["mode"] == "quick"
    memory = records[-1]
    assert any(k.endswith("_ckpt_mb") for k in memory) and any(k.endswith("_plain_mb") for k in memory)
    joint = next(r for r in records if r["figure"] == "joint_train")
    assert joint["skipped_windows"] == 0  # every timed window stepped θ0 and φ
    assert any(k.endswith("_first_mb") for k in joint) and any(k.endswith("_second_mb") for k in joint)


def test_only_selects_figures_and_rejects_unknown_ones():
    records = _run("--quick", "--only", "memory,lstm_fwd_bwd")
    assert [r["figure"] for r in records] == ["lstm_fwd_bwd", "memory"]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--only", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown figure" in proc.stderr
