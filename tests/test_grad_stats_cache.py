"""The disk cache of measured gradient statistics: keyed by everything the measurement depends on."""
import torch

from dynlm.dynamic.grad_stats import GradStats
from dynlm.run.grad_stats_cache import cache_path, load_cached, save_cached

NAMES = ["layers.0.weight_hh", "layers.0.bias_hh"]


def _stats():
    g = torch.Generator().manual_seed(0)
    return GradStats({"layers.0.weight_hh": torch.rand(8, 2, generator=g),
                      "layers.0.bias_hh": torch.rand(8, generator=g)}, tokens=320)


def _path(tmp_path, **change):
    args = {"ckpt_sha256": "a" * 64, "split_sha256": "b" * 64, "names": NAMES, "tokens": 300, "streams": 4,
            "seg_len": 5, **change}
    return cache_path(str(tmp_path), **args)


def test_round_trip(tmp_path):
    path = _path(tmp_path)
    assert load_cached(path, NAMES, "cpu") is None
    assert save_cached(path, _stats())
    back = load_cached(path, NAMES, "cpu")
    assert back.tokens == 320 and all(torch.equal(back.v[n], _stats().v[n]) for n in NAMES)


def test_every_input_of_the_measurement_changes_the_key(tmp_path):
    base = _path(tmp_path)
    changes = [{"ckpt_sha256": "c" * 64}, {"split_sha256": "d" * 64}, {"names": NAMES[:1]}, {"tokens": 301},
               {"streams": 2}, {"seg_len": 10}]
    paths = {_path(tmp_path, **c) for c in changes}
    assert base not in paths and len(paths) == len(changes)
    assert base.parent == tmp_path / "grad_stats"


def test_a_damaged_or_partial_file_is_measured_again(tmp_path):
    path = _path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    assert load_cached(path, NAMES, "cpu") is None
    save_cached(path, GradStats({"layers.0.weight_hh": torch.ones(8, 2)}, tokens=10))  # misses a dynamic tensor
    assert load_cached(path, NAMES, "cpu") is None


def test_default_folder_follows_dynlm_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNLM_CACHE", str(tmp_path / "elsewhere"))
    assert cache_path(None, "a", "b", NAMES, 1, 1, 1).parent == tmp_path / "elsewhere" / "grad_stats"
