"""Plain vs fused Offset Learning: CPU time and peak memory of one inference call.

Peak memory is the largest working set of tensors alive during the call, tracked operator by
operator (the process's resident-set size is too coarse: torch's own start-up dwarfs it).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from offseg_vis.engine.runtime import environment
from offseg_vis.engine.timing import time_call
from offseg_vis.models.offset_learning import OffsetLearning


def _make(num_classes: int, channels: int, size: int) -> tuple[OffsetLearning, torch.Tensor]:
    torch.manual_seed(0)
    module = OffsetLearning(num_classes, channels).eval()
    x = torch.randn(1, channels, size, size).relu()
    return module, x


def _run_path(module: OffsetLearning, x: torch.Tensor, path: str) -> torch.Tensor:
    with torch.no_grad():
        return module.full_forward(x).logits if path == "plain" else module(x)


class PeakMemory(TorchDispatchMode):
    """Tracks the peak bytes of tensors alive that were created inside the ``with`` block.

    Every operator output registers its storage size and a finaliser that subtracts it when
    the tensor is freed, so the running sum is the live working set of the computation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self._seen or key == 0:
                    continue  # a view of a storage we already count
                self._seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def peak_memory_mb(module: OffsetLearning, x: torch.Tensor, path: str) -> float:
    """Peak MB of intermediate tensors alive during one call of ``path`` ("plain" or "fused")."""
    tracker = PeakMemory()
    with tracker:
        out = _run_path(module, x, path)
    del out
    return tracker.peak / 2**20


def benchmark(num_classes: int = 150, channels: int = 256, size: int = 128, runs: int = 20) -> dict:
    """Time both paths and measure their peak working memory."""
    module, x = _make(num_classes, channels, size)
    result = {"num_classes": num_classes, "channels": channels, "size": size, **environment()}
    for path in ("plain", "fused"):
        result[path] = time_call(lambda p=path: _run_path(module, x, p), warmup=5, runs=runs)
        result[path]["peak_memory_mb"] = peak_memory_mb(module, x, path)
    with torch.no_grad():
        result["max_abs_diff"] = float((module.full_forward(x).logits - module(x)).abs().max())
    result["speedup"] = result["plain"]["median_s"] / result["fused"]["median_s"]
    result["memory_ratio"] = result["plain"]["peak_memory_mb"] / max(result["fused"]["peak_memory_mb"], 1e-6)
    return result


def format_result(r: dict) -> str:
    return (
        f"Offset Learning K={r['num_classes']} C={r['channels']} {r['size']}x{r['size']} "
        f"({r['threads']} threads, torch {r['torch']}, {r['cpu']})\n"
        f"  plain: median {r['plain']['median_s'] * 1e3:.1f} ms, min {r['plain']['min_s'] * 1e3:.1f} ms, "
        f"peak +{r['plain']['peak_memory_mb']:.0f} MB\n"
        f"  fused: median {r['fused']['median_s'] * 1e3:.1f} ms, min {r['fused']['min_s'] * 1e3:.1f} ms, "
        f"peak +{r['fused']['peak_memory_mb']:.0f} MB\n"
        f"  speed-up x{r['speedup']:.2f}, memory ratio x{r['memory_ratio']:.2f}, "
        f"max |plain - fused| = {r['max_abs_diff']:.2e}"
    )
