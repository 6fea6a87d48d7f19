"""`diffinv.threads`: the thread count chosen for a given load, that a user's own settings
(`--threads`, OMP_NUM_THREADS, MKL_NUM_THREADS, OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME) win,
and that the wait policy reaches OpenMP, i.e. is set before torch loads its runtime."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from diffinv import threads
from diffinv.threads import Snapshot


def fail():
    raise AssertionError("must not be called")


@pytest.fixture
def torch_threads():
    """Restores torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores, busy, expected",
    [
        (2, 0.0, 2),  # a quiet machine: every core
        (2, 0.4, 2),  # a little background work: still both
        (2, 0.6, 1),
        (2, 1.0, 1),  # one busy process: the free core
        (2, 2.0, 1),  # two busy processes (the report): one thread
        (2, 7.5, 1),  # never fewer than one
        (8, 3.0, 5),
        (8, 0.0, 8),
        (1, 0.0, 1),
        (4, -1.0, 4),  # never more than the cores
    ],
)
def test_default_threads(cores, busy, expected):
    assert threads.default_threads(cores, busy) == expected


PROC_STAT = """\
cpu  300 0 100 500 0 0 0 0 0 0
cpu0 100 10 40 200 20 5 5 20 0 0
cpu1 200 0 60 300 0 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_read_cpu_times_counts_steal_as_busy_and_iowait_as_free():
    times = threads.read_cpu_times(PROC_STAT)
    assert times == {"cpu0": (100 + 10 + 40 + 5 + 5 + 20, 400), "cpu1": (260, 560)}  # no aggregate "cpu" line


def test_read_cpu_times_without_core_lines_or_garbled():
    assert threads.read_cpu_times("intr 1 2\n\n") is None
    assert threads.read_cpu_times("cpu0 1 2 x 4\n") is None
    assert threads.read_cpu_times("cpu0 1 2 3 4\n") == {"cpu0": (6, 10)}  # old kernels: fewer fields


def snap(cpus, own_s, wall_s):
    return Snapshot({name: (busy, total) for name, (busy, total) in cpus.items()}, own_s, wall_s)


def test_outside_busy_cores_takes_off_this_process():
    start = snap({"cpu0": (0, 0), "cpu1": (0, 0)}, own_s=1.0, wall_s=10.0)
    # Over 2 s: cpu0 busy all the time, cpu1 half; this process used 0.5 s of CPU (0.25 core).
    end = snap({"cpu0": (200, 200), "cpu1": (100, 200)}, own_s=1.5, wall_s=12.0)
    assert threads.outside_busy_cores(start, end) == pytest.approx(1.5 - 0.25)
    assert threads.outside_busy_cores(start, end, cpus={0}) == pytest.approx(1.0 - 0.25)  # allowed cores only
    assert threads.outside_busy_cores(start, end, cpus={1}) == pytest.approx(0.5 - 0.25)


def test_outside_busy_cores_never_negative_and_none_when_unknown():
    start = snap({"cpu0": (0, 0)}, own_s=0.0, wall_s=0.0)
    end = snap({"cpu0": (50, 100)}, own_s=1.0, wall_s=1.0)  # own time rounded above the ticks
    assert threads.outside_busy_cores(start, end) == 0.0
    too_short = snap({"cpu0": (10, 20)}, own_s=0.0, wall_s=0.2)
    assert threads.outside_busy_cores(start, too_short) is None
    assert threads.outside_busy_cores(Snapshot(None, 0.0, 0.0), end) is None


def test_busy_cores_measures_from_prepare_environment(monkeypatch):
    monkeypatch.setattr(threads, "_start", snap({"cpu0": (0, 0), "cpu1": (0, 0)}, 0.0, 0.0))
    monkeypatch.setattr(threads, "snapshot", lambda: snap({"cpu0": (300, 300), "cpu1": (300, 300)}, 3.0, 3.0))
    monkeypatch.setattr(threads.time, "monotonic", lambda: 3.0)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: fail())  # a long enough window: no sample
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.busy_cores() == pytest.approx(1.0)  # 2 busy cores, one of them this process


def test_busy_cores_waits_out_a_short_window(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(threads, "_start", snap({"cpu0": (0, 0)}, 0.0, 999.9))
    monkeypatch.setattr(threads, "snapshot", lambda: snap({"cpu0": (50, 50)}, 0.0, clock[0]))
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert threads.busy_cores() == pytest.approx(1.0)
    assert clock[0] == pytest.approx(999.9 + threads.MIN_WINDOW_S)  # slept only the rest of the window


@pytest.mark.parametrize("start", [None, snap({"cpu0": (0, 0)}, 0.0, 400.0)])  # none, or a stale one
def test_busy_cores_samples_afresh_without_a_usable_start(monkeypatch, start):
    snapshots = iter([snap({"cpu0": (0, 0)}, 0.0, 1000.0), snap({"cpu0": (25, 50)}, 0.0, 1000.5)])
    slept = []
    monkeypatch.setattr(threads, "_start", start)
    monkeypatch.setattr(threads, "snapshot", lambda: next(snapshots))
    monkeypatch.setattr(threads.time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(threads.time, "sleep", slept.append)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert threads.busy_cores() == pytest.approx(0.5)
    assert slept == [threads.MIN_WINDOW_S]


def test_busy_cores_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(threads, "_start", None)
    monkeypatch.setattr(threads, "read_cpu_times", lambda text=None: None)  # no /proc/stat
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.5, 1.0, 0.5))
    assert threads.busy_cores() == 3.5


def test_choose_threads_given_count_wins():
    assert threads.choose_threads(3, environ={"OMP_NUM_THREADS": "1"}, cores=fail, busy=fail) == 3


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_choose_threads_leaves_a_users_thread_variable_to_torch(name):
    assert threads.choose_threads(None, environ={name: "2"}, cores=fail, busy=fail) is None


def test_choose_threads_from_the_load():
    assert threads.choose_threads(None, environ={}, cores=lambda: 2, busy=lambda: 2.0) == 1
    assert threads.choose_threads(None, environ={}, cores=lambda: 2, busy=lambda: 0.1) == 2
    assert threads.choose_threads(None, environ={"OMP_NUM_THREADS": ""}, cores=lambda: 2, busy=lambda: 2.0) == 1


def test_prepare_environment_sets_passive_waiting_only_when_unset(monkeypatch):
    monkeypatch.setattr(threads, "_start", None)
    environ = {}
    threads.prepare_environment(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert threads._start is not None  # the load window starts here
    for name, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000"), ("KMP_BLOCKTIME", "200")]:
        environ = {name: value}
        threads.prepare_environment(environ)
        assert environ == {name: value}, name


def test_set_up_torch_uses_the_given_count(torch_threads, monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", fail)
    threads.set_up_torch(3)
    assert torch.get_num_threads() == 3


def test_set_up_torch_default_under_load(torch_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "allowed_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 2.0)
    torch.set_num_threads(2)
    threads.set_up_torch(None)
    assert torch.get_num_threads() == 1


def test_set_up_torch_default_never_above_torchs_own(torch_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "allowed_cores", lambda: 16)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    torch.set_num_threads(2)
    threads.set_up_torch(None)
    assert torch.get_num_threads() == 2


def test_set_up_torch_respects_omp_num_threads(torch_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "busy_cores", fail)
    torch.set_num_threads(2)
    threads.set_up_torch(None)
    assert torch.get_num_threads() == 2


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key not in threads.WAIT_VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**environ, **env}, capture_output=True, text=True
    )


def test_cli_prepares_the_environment_before_torch_is_imported():
    result = run_python(
        """
        import sys
        import diffinv.threads
        seen = []
        diffinv.threads.prepare_environment = lambda: seen.append("torch" in sys.modules)
        from diffinv.cli import main
        main(["analogy", "missing-a.png", "missing-a2.png", "missing-b.png", "-o", "out.png"])
        print("seen", seen)
        """
    )
    assert "seen [False]" in result.stdout, result.stderr


LIBGOMP_SPINS = """
    from diffinv.threads import prepare_environment
    prepare_environment()
    import torch
    torch.ones(64, 64).sum()  # starts OpenMP
"""


def libgomp_spin_count(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.strip().startswith("GOMP_SPINCOUNT"):
            return line.split("=")[1].strip().strip("'")
    return None


def test_passive_waiting_reaches_openmp():
    """With torch's libgomp, PASSIVE means no spinning."""
    result = run_python(LIBGOMP_SPINS, OMP_DISPLAY_ENV="VERBOSE")
    if libgomp_spin_count(result.stderr) is None:
        pytest.skip("torch's OpenMP runtime is not libgomp")
    assert libgomp_spin_count(result.stderr) == "0"


@pytest.mark.slow
def test_a_users_spin_count_reaches_openmp():
    """A user's GOMP_SPINCOUNT stays theirs, in torch's libgomp too. Slow (a second process that
    imports torch): by default test_prepare_environment_sets_passive_waiting_only_when_unset checks
    that prepare_environment leaves GOMP_SPINCOUNT alone, and test_passive_waiting_reaches_openmp
    that the environment it leaves is what torch's libgomp reads."""
    mine = run_python(LIBGOMP_SPINS, OMP_DISPLAY_ENV="VERBOSE", GOMP_SPINCOUNT="12345")
    if libgomp_spin_count(mine.stderr) is None:
        pytest.skip("torch's OpenMP runtime is not libgomp")
    assert libgomp_spin_count(mine.stderr) == "12345"
