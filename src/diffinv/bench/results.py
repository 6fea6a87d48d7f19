"""A run directory's shared state, torch-free: results.jsonl, run.json, the lock and the claims.

Every process working on a run directory (shards under `accelerate launch`, or plain processes
started on the same --out) takes one lock, `results.jsonl.lock` (the `filelock` package: flock
on POSIX, msvcrt on Windows), to append a result line, to check or extend run.json, to claim
work and to write the summaries.

Claims. Before a process works on a (method, triplet) it writes, under the lock, a claim file
`claims/<key>.json` holding the method, the triplet id, its hostname and pid. Another process
then leaves that pair alone, so two processes on one --out split the work instead of both doing
all of it. A claim is dropped when its result line is appended (a finished row in results.jsonl
always counts as done, claimed or not) and when its process stops without finishing. A claim
left by a killed process is stale and is taken over: on the same host when its pid is gone (or
is now another process of ours); a claim from another host cannot be checked and is respected —
delete `claims/` when no run is using the directory to release such leftovers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ..config import InversionConfig
from ..errors import DiffinvError

RESULTS = "results.jsonl"
LOCK = "results.jsonl.lock"
CLAIMS = "claims"


# --- the lock and results.jsonl --------------------------------------------------------------------------
def results_lock(run_dir: str | Path) -> FileLock:
    """The run directory's exclusive lock (a new object each time; it is not re-entrant across
    objects, so never take it while holding it)."""
    return FileLock(str(Path(run_dir) / LOCK))


def read_results(run_dir: str | Path) -> list[dict]:
    """Every complete line of results.jsonl; a half-written or corrupt line is skipped."""
    path = Path(run_dir) / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "method" in row and "id" in row:
            rows.append(row)
    return rows


def done_pairs(run_dir: str | Path) -> set[tuple[str, str]]:
    """The (method, triplet id) pairs with a result line."""
    return {(row["method"], row["id"]) for row in read_results(run_dir)}


def append_result(run_dir: str | Path, row: dict) -> None:
    """One line, written whole under the lock, and the pair's claim dropped. A line left
    half-written by a kill is closed with a newline first, so it spoils only itself."""
    run_dir = Path(run_dir)
    line = json.dumps(row, sort_keys=True) + "\n"
    with results_lock(run_dir), open(run_dir / RESULTS, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
        claim_path(run_dir, row["method"], row["id"]).unlink(missing_ok=True)


def check_run_record(run_dir: str | Path, record: dict) -> None:
    """Write run.json, or make sure the directory holds the same run before resuming it (adding
    any new methods to the record). Under the lock: processes on one directory start together.

    record["configs"] (optional): each method's resolved config by spec. A method the directory
    recorded with another config is refused, naming it; a run.json written before configs were
    recorded has none to compare and takes today's."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    with results_lock(run_dir):
        if path.exists():
            previous = json.loads(path.read_text(encoding="utf-8"))
            keys = ("dataset", "base_config", "model", "seed")
            today = {**record, "base_config": _as_recorded(record.get("base_config"), previous.get("base_config"))}
            if {k: previous.get(k) for k in keys} != {k: today.get(k) for k in keys}:
                raise DiffinvError(
                    f"{run_dir} holds a different run (dataset, model, base config or seed differ); give another --out"
                )
            _check_configs(run_dir, previous.get("configs", {}), record.get("configs", {}))
            merged = {"methods": list(dict.fromkeys(previous.get("methods", []) + record["methods"]))}
            if "configs" in previous or "configs" in record:
                merged["configs"] = {**previous.get("configs", {}), **record.get("configs", {})}
            record = {**record, **merged}
        tmp = path.with_name(f".run.json.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(tmp, path)


# An option added to InversionConfig after a run was recorded, at its default, changes nothing that
# run did (a new option's default keeps the old behaviour), so such a run is resumed as the same run.
_NEW_OPTION_DEFAULTS = dataclasses.asdict(InversionConfig())


def _as_recorded(config: dict | None, recorded: dict | None) -> dict | None:
    """`config` without the options `recorded` lacks that are at their defaults (see above)."""
    if not config or not recorded:
        return config
    return {
        name: value
        for name, value in config.items()
        if name in recorded or name not in _NEW_OPTION_DEFAULTS or value != _NEW_OPTION_DEFAULTS[name]
    }


def _check_configs(run_dir: Path, recorded: dict, today: dict) -> None:
    """A method recorded with another config than today's is refused in one line naming it and
    the settings that differ (its results would mix two methods under one name)."""
    for spec, config in today.items():
        config = _as_recorded(config, recorded.get(spec))
        if spec not in recorded or recorded[spec] == config:
            continue
        before, now = recorded[spec] or {}, config or {}
        changed = [
            f"{name} {before.get(name, '(none)')!r} → {now.get(name, '(none)')!r}"
            for name in sorted(set(before) | set(now))
            if before.get(name, "(none)") != now.get(name, "(none)")
        ]
        raise DiffinvError(
            f"{run_dir} ran {spec} with another config ({'; '.join(changed) or 'none before'}); give another --out"
        )


# --- claims ----------------------------------------------------------------------------------------------
_LIVE_TOKENS: set[str] = set()  # the workers of this process that are running now


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Worker:
    """Who holds a claim: a host, a process, and a token naming one run of a runner in it (so a
    pid reused after a kill, or two runners in one process, are told apart)."""

    host: str
    pid: int
    token: str

    @classmethod
    def new(cls) -> Worker:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)

    def owns(self, claim: dict) -> bool:
        return claim.get("token") == self.token

    def sees_live(self, claim: dict) -> bool:
        """Whether `claim` (a claim file's contents) belongs to a process still at work."""
        if not isinstance(claim.get("pid"), int) or not isinstance(claim.get("host"), str):
            return False  # damaged: written by a process killed mid-write
        if claim["host"] != self.host:
            return True  # cannot be checked from here
        if claim["pid"] == self.pid:
            return claim.get("token") in _LIVE_TOKENS
        return pid_alive(claim["pid"])


def claim_path(run_dir: str | Path, method: str, triplet_id: str) -> Path:
    key = hashlib.sha1(f"{method}\n{triplet_id}".encode()).hexdigest()[:20]
    return Path(run_dir) / CLAIMS / f"{key}.json"


def read_claim(path: Path) -> dict | None:
    try:
        claim = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return claim if isinstance(claim, dict) else {}


def claim_next(run_dir: str | Path, worker: Worker, method: str, candidates: Iterable, count: int, key=None) -> list:
    """Claim, under the lock, the first `count` of `candidates` that are neither done nor claimed
    by a live worker (stale claims are taken over), and return them. `key(candidate)` gives its
    triplet id (the candidate itself by default). An empty list: nothing left for this worker."""
    key = key or (lambda item: item)
    run_dir = Path(run_dir)
    taken = []
    with results_lock(run_dir):
        done = done_pairs(run_dir)
        for item in candidates:
            if len(taken) == count:
                break
            triplet_id = key(item)
            if (method, triplet_id) in done:
                continue
            path = claim_path(run_dir, method, triplet_id)
            claim = read_claim(path)
            if claim is not None and not worker.owns(claim) and worker.sees_live(claim):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "method": method,
                "id": triplet_id,
                "host": worker.host,
                "pid": worker.pid,
                "token": worker.token,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            path.write_text(json.dumps(record), encoding="utf-8")
            taken.append(item)
    return taken


def release_claims(run_dir: str | Path, worker: Worker, pairs: Iterable[tuple[str, str]]) -> None:
    """Drop `worker`'s claims of `pairs` (the work it did not finish), leaving others' alone."""
    with results_lock(run_dir):
        for method, triplet_id in pairs:
            path = claim_path(run_dir, method, triplet_id)
            claim = read_claim(path)
            if claim is not None and worker.owns(claim):
                path.unlink(missing_ok=True)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Ctrl-C waits until the block has run (in the main thread), so that a result row and its
    files are committed together or not at all; the interrupt is raised when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def staged_path(path: Path) -> Path:
    """The temporary name `path` is written under before it is renamed into place."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


@contextmanager
def working(run_dir: str | Path) -> Iterator[tuple[Worker, set[tuple[str, str]]]]:
    """A live `Worker` and the set of pairs it claims; on leaving (finished, failed or
    interrupted), whatever it still holds is released, so a rerun needs no staleness check."""
    worker = Worker.new()
    held: set[tuple[str, str]] = set()
    _LIVE_TOKENS.add(worker.token)
    try:
        yield worker, held
    finally:
        _LIVE_TOKENS.discard(worker.token)
        if held:
            release_claims(run_dir, worker, held)
