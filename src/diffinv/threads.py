"""How many CPU threads torch uses, and how its OpenMP threads wait.

Torch-free until `set_up_torch` runs, so that `prepare_environment` can set OpenMP's
environment before torch (and its OpenMP runtime) is first imported.

On a busy machine torch's default — one thread per core, spinning at every barrier before it
sleeps — is many times slower than one thread: each parallel op waits for the thread that the
scheduler gave to another process (docs/benchmarks.md, "Threads under outside load"). So:

* OpenMP's threads wait passively (`OMP_WAIT_POLICY=PASSIVE`; torch's CPU wheels use GNU
  libgomp, LLVM's and Intel's runtimes read the same variable) unless the user chose a policy;
* without `--threads` or `OMP_NUM_THREADS`, torch gets one thread per core that other processes
  leave free, at least one: the cores' busy time from /proc/stat between `prepare_environment`
  and `set_up_torch` (the seconds Python spends importing torch), less this process's own.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

# Variables through which a user has already chosen how OpenMP threads wait (libgomp, Intel's libiomp).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# Variables through which a user has already chosen torch's thread count.
COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# A sample shorter than this says little (/proc/stat counts in hundredths of a second).
MIN_WINDOW_S = 0.5
# A window longer than this (a demo loading its first model long after starting) is stale.
MAX_WINDOW_S = 60.0

CpuTimes = dict[str, tuple[int, int]]  # cpu name → (busy ticks, all ticks)


class Snapshot:
    """The allowed cores' busy time, this process's CPU time and the clock, at one moment."""

    def __init__(self, cpus: CpuTimes | None, own_s: float, wall_s: float) -> None:
        self.cpus, self.own_s, self.wall_s = cpus, own_s, wall_s


_start: Snapshot | None = None


def allowed_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def read_cpu_times(text: str | None = None) -> CpuTimes | None:
    """Busy and total ticks of each core (the `cpuN` lines of /proc/stat); None where unreadable.

    Busy is user, nice, system, irq, softirq and steal (time the hypervisor gave to others);
    idle and iowait are free time.
    """
    if text is None:
        try:
            with open("/proc/stat") as file:
                text = file.read()
        except OSError:
            return None
    times = {}
    for line in text.splitlines():
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        try:
            values = [int(value) for value in fields[:8]] + [0] * (8 - len(fields[:8]))
        except ValueError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = values
        busy = user + nice + system + irq + softirq + steal
        times[name] = (busy, busy + idle + iowait)
    return times or None


def snapshot() -> Snapshot:
    own = os.times()
    return Snapshot(read_cpu_times(), own.user + own.system, time.monotonic())


def outside_busy_cores(start: Snapshot, end: Snapshot, cpus: set[int] | None = None) -> float | None:
    """Cores kept busy by other processes between two snapshots; None when they can't tell.

    Sums each allowed core's busy share of the window and takes off what this process used.
    """
    if start.cpus is None or end.cpus is None or end.wall_s - start.wall_s < MIN_WINDOW_S:
        return None
    busy = 0.0
    for name, (end_busy, end_total) in end.cpus.items():
        if cpus is not None and int(name[3:]) not in cpus or name not in start.cpus:
            continue
        start_busy, start_total = start.cpus[name]
        if end_total > start_total:
            busy += (end_busy - start_busy) / (end_total - start_total)
    own = (end.own_s - start.own_s) / (end.wall_s - start.wall_s)
    return max(0.0, busy - own)


def busy_cores() -> float:
    """Cores that other processes keep busy now: measured since `prepare_environment` (at least
    MIN_WINDOW_S), or over a fresh sample of MIN_WINDOW_S when it didn't run or ran over a minute
    ago; the 1-minute load average where /proc/stat is missing."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        cpus = None
    start = _start
    if start is None or time.monotonic() - start.wall_s > MAX_WINDOW_S:
        start = snapshot()
    elapsed = time.monotonic() - start.wall_s
    if elapsed < MIN_WINDOW_S:  # (the command line imports torch for longer than this)
        time.sleep(MIN_WINDOW_S - elapsed)
    busy = outside_busy_cores(start, snapshot(), cpus)
    if busy is not None:
        return busy
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(cores: int, busy: float) -> int:
    """Threads for torch when the user gave no count: the cores left free by others, at least 1."""
    return max(1, min(cores, int(cores - busy + 0.5)))


def user_wait_policy(environ=os.environ) -> str | None:
    """The user's own OpenMP wait setting (`NAME=value`), or None."""
    for name in WAIT_VARIABLES:
        if environ.get(name):
            return f"{name}={environ[name]}"
    return None


def user_thread_count(environ=os.environ) -> str | None:
    for name in COUNT_VARIABLES:
        if environ.get(name):
            return f"{name}={environ[name]}"
    return None


def prepare_environment(environ=os.environ) -> None:
    """Set the OpenMP environment the command line runs under. Call before importing torch.

    OpenMP threads wait passively unless the user set a wait policy; it is read once, when torch
    loads its OpenMP runtime, so this does nothing useful once torch is imported. Also starts the
    window over which `set_up_torch` measures the load.
    """
    global _start
    if user_wait_policy(environ) is None:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
    _start = snapshot()


def choose_threads(
    threads: int | None,
    environ=os.environ,
    cores: Callable[[], int] | None = None,
    busy: Callable[[], float] | None = None,
) -> int | None:
    """The thread count to give torch: `threads` when given; None (torch's own choice) when the user
    set OMP_NUM_THREADS or MKL_NUM_THREADS; otherwise the cores other processes leave free
    (`cores` and `busy` default to `allowed_cores` and `busy_cores`)."""
    if threads:
        return threads
    if user_thread_count(environ) is not None:
        return None
    return default_threads((cores or allowed_cores)(), (busy or busy_cores)())


def set_up_torch(threads: int | None) -> None:
    """Torch's thread count (`threads`, or the default when None) and its CPU float settings.

    With DIFFINV_DEBUG_THREADS set, says on stderr how many threads torch got.
    """
    import torch

    # Subnormal floats are tens of times slower on x86 CPUs and change nothing here.
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    elif torch.get_num_threads() > 1:  # (one thread already: nothing to measure)
        count = choose_threads(None)
        if count is not None and count < torch.get_num_threads():  # never more than torch's own default
            torch.set_num_threads(count)
    if os.environ.get("DIFFINV_DEBUG_THREADS"):
        print(f"diffinv: torch threads {torch.get_num_threads()}", file=sys.stderr)
