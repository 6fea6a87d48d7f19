"""Wall time of the README's command with torch's default threads against `--threads 1`, with and
without outside load (other processes keeping the cores busy).

Each run is the whole command in a fresh process (`diffinv ... --quiet`, a new output path each
time), as a user would time it. The outside load is N processes that each run torch matmuls on one
thread, like other diffinv runs started with `--threads 1`; they are bounded in time, and they are
stopped when the benchmark ends, fails or is interrupted. The variants run interleaved, repeat by
repeat, so that drift in the machine's load affects them alike.

    python benchmarks/threads_under_load.py [--repeats 3] [--load 2] [--workload analogy|fit|fit-t2i]
        [--variant 'LABEL|CLI ARGS|ENV=VALUE ...'] [--no-baseline]

Prints a markdown table: the 1-minute load average before and after each block (other work on the
machine shows there), the thread count torch ran with in each run (the command reports it to stderr
when DIFFINV_DEBUG_THREADS is set), median, min and max wall seconds per variant and load, and the
ratio of each median to the `--threads 1` median under the same load.
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = ROOT / "examples" / "shape"
IMAGES = [str(SHAPE / name) for name in ("a.png", "a_prime.png", "b.png")]
WORKLOADS = {
    "analogy": [],  # the README's first command: D̃ from the encoder, 20 drawing steps
    "fit": ["--init", "zeros", "--steps", "200"],  # the editor with a 200-step fit
    "fit-t2i": ["--model", "shapes", "--steps", "100"],  # the text-to-image model, 100 fit steps
}
# The variables that decide torch's threads and how its OpenMP threads wait; cleared for every
# run so that the benchmark's own environment doesn't leak into a variant.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

LOAD_CODE = """
import os, sys, time
import torch
torch.set_num_threads(1)
deadline = time.monotonic() + float(sys.argv[1])
parent = os.getppid()
a = torch.randn(256, 256)
print("ready", flush=True)
while time.monotonic() < deadline and os.getppid() == parent:
    for _ in range(50):
        a = torch.tanh(a @ a)
"""

_loaders: list[subprocess.Popen] = []


def start_load(n: int, seconds: float) -> None:
    """N busy processes, each on one thread, that end by themselves after `seconds` at the latest."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for _ in range(n):
        process = subprocess.Popen(
            [sys.executable, "-c", LOAD_CODE, str(seconds)], env=env, stdout=subprocess.PIPE, text=True
        )
        _loaders.append(process)
    for process in _loaders:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("a load process failed to start")


def stop_load() -> None:
    while _loaders:
        process = _loaders.pop()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _on_signal(signum, frame) -> None:
    stop_load()
    sys.exit(128 + signum)


def parse_variant(text: str) -> tuple[str, list[str], dict[str, str]]:
    """'LABEL|CLI ARGS|ENV=VALUE ...' → (label, args, env)."""
    parts = [*text.split("|"), "", ""][:3]
    env = dict(item.split("=", 1) for item in shlex.split(parts[2]))
    return parts[0], shlex.split(parts[1]), env


def run_once(
    workload: list[str], args: list[str], env: dict[str, str], out_dir: Path, index: int, timeout: float
) -> tuple[float, str]:
    """Wall seconds of one command (inf past `timeout`), and the thread count torch ran with ("?"
    where not reported)."""
    run_env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    run_env.update(env)
    run_env["DIFFINV_DEBUG_THREADS"] = "1"
    command = [
        sys.executable,
        "-c",
        "import sys; from diffinv.cli import main; sys.exit(main())",
        "analogy",
        *IMAGES,
        "-o",
        str(out_dir / f"run{index}.png"),
        "--quiet",
        *workload,
        *args,
    ]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return math.inf, "?"
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command[3:])} failed:\n{result.stderr[-2000:]}")
    found = re.search(r"diffinv: torch threads (\d+)", result.stderr)
    return seconds, found.group(1) if found else "?"


def seconds_text(seconds: float, timeout: float) -> str:
    return f"> {timeout:.0f} s" if math.isinf(seconds) else f"{seconds:.1f} s"


def measure(variants, workload, repeats: int, out_dir: Path, counter: list[int], timeout: float):
    """Seconds and thread counts of each variant, `repeats` runs each, interleaved."""
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    threads: dict[str, list[str]] = {label: [] for label, _, _ in variants}
    for repeat in range(repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]  # alternate who runs first
        for label, args, env in order:
            counter[0] += 1
            seconds, count = run_once(workload, args, env, out_dir, counter[0], timeout)
            times[label].append(seconds)
            threads[label].append(count)
            print(f"  {label}: {seconds_text(seconds, timeout)}, {count} threads", file=sys.stderr, flush=True)
    return times, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=2, help="outside busy processes (default 2)")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="analogy")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="'LABEL|CLI ARGS|ENV=VALUE ...', added to the default and --threads 1 (repeatable)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without outside load")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds the load runs before timing starts")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="a run stopped after this counts as slower")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="the load processes' own time limit")
    args = parser.parse_args()

    variants = [("default", [], {}), ("--threads 1", ["--threads", "1"], {})]
    variants += [parse_variant(text) for text in args.variant]
    workload = WORKLOADS[args.workload]
    atexit.register(stop_load)
    signal.signal(signal.SIGTERM, _on_signal)

    counter = [0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        loads = ([] if args.no_baseline else [0]) + ([args.load] if args.load > 0 else [])
        for load in loads:
            if load:
                start_load(load, args.max_seconds)
                time.sleep(args.settle)
            before = os.getloadavg()[0]
            try:
                times, threads = measure(variants, workload, args.repeats, out_dir, counter, args.run_timeout)
            finally:
                stop_load()
            averages = f"{before:.1f} → {os.getloadavg()[0]:.1f}"
            reference = statistics.median(times["--threads 1"])
            for label, _, _ in variants:
                median = statistics.median(times[label])
                low, high = min(times[label]), max(times[label])
                rows.append((load, averages, label, ",".join(threads[label]), median, low, high, median / reference))

    command = " ".join(["diffinv analogy A A′ B -o NEW.png --quiet", *workload])
    print(f"\n`{command}`, {args.repeats} repeats, {os.cpu_count()} CPUs\n")
    print("| outside load | load avg. | variant | torch threads | median | min | max | median / `--threads 1` |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for load, averages, label, threads, median, low, high, ratio in rows:
        name = "none added" if load == 0 else f"{load} busy processes"
        times = " | ".join(seconds_text(value, args.run_timeout) for value in (median, low, high))
        print(f"| {name} | {averages} | {label} | {threads} | {times} | **{ratio:.2f}** |")


if __name__ == "__main__":
    main()
