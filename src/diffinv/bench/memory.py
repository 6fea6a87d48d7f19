"""Peak memory of a stretch of a benchmark's work (one method drawing one chunk of triplets).

`PeakMemory(device)` measures one of three things, named by its `kind`:

- "cuda": `torch.cuda.max_memory_allocated` on the model's GPU, its peak statistics reset at
  `start()`: the most memory PyTorch's tensors held at once (weights included; not the caching
  allocator's reserve, not other processes).
- "rss": on Linux, the peak resident set size of this process (VmHWM), its high-water mark reset
  to the current size at `start()` (writing 5 to /proc/self/clear_refs): the most RAM the whole
  process held at once (weights, libraries, Python and every thread included).
- "rss-growth": elsewhere the high-water mark cannot be reset; what is reported is how much the
  process's all-time peak (`getrusage` ru_maxrss) rose during the stretch, 0 when the stretch
  stayed below an earlier peak — a lower bound of the stretch's own peak growth, never its total.

Torch is imported only when a GPU is measured.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MB = 2**20
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _high_water_mark_kb() -> int | None:
    """VmHWM of /proc/self/status in KiB, or None where there is no such file."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _max_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


class PeakMemory:
    """`start()`, then the work, then `peak_mb()`: the peak (see the module) in MiB since `start()`.

    device: where the methods run ("cuda", "cuda:1", a torch.device, "cpu" …); a CUDA device is
    measured on the GPU, anything else as the process's RAM.
    """

    def __init__(self, device=None):
        self.device = str(device) if device is not None else "cpu"
        if self.device.startswith("cuda"):
            self.kind = "cuda"
        elif _high_water_mark_kb() is not None and _reset_high_water_mark():
            self.kind = "rss"
        else:
            self.kind = "rss-growth"
        self._start = 0

    def start(self) -> None:
        if self.kind == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "rss":
            _reset_high_water_mark()
        else:
            self._start = _max_rss_bytes()

    def peak_mb(self) -> float:
        if self.kind == "cuda":
            import torch

            return torch.cuda.max_memory_allocated(self.device) / MB
        if self.kind == "rss":
            return (_high_water_mark_kb() or 0) / 1024
        return max(_max_rss_bytes() - self._start, 0) / MB
