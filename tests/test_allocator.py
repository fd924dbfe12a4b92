"""glibc's malloc settings for large tensors (dynlm/run/allocator.py), in a child process of their own."""
import json
import subprocess
import sys

CHILD = r"""
import json, torch
from dynlm.run.allocator import keep_freed_memory, return_freed_memory, trim_freed_memory

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

def freed_kib():  # resident memory that a 64 MB tensor gives back when it is freed
    block = torch.ones(16 * 1024 * 1024)
    held = rss_kib()
    del block
    return held - rss_kib()

ok_return = return_freed_memory()
trim_freed_memory()
returned = freed_kib()
ok_keep = keep_freed_memory()
kept = freed_kib()
print(json.dumps({"ok": ok_return and ok_keep, "returned": returned, "kept": kept}))
"""


def test_keep_freed_memory_keeps_a_freed_block_resident_and_return_freed_memory_gives_it_back():
    # return_freed_memory (what the peak-memory benchmark needs): the block leaves the process at free;
    # keep_freed_memory (what CPU runs use): it stays resident for the next tensor
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"]
    assert r["returned"] > 56 * 1024, r
    assert r["kept"] < 8 * 1024, r
