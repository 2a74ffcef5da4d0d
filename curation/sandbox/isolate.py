"""Run untrusted generated Python against unit tests, contained (METHODS.md §3: NICE's code reward).

NICE rewards a sampled program by its unit-test pass rate, so model output is executed. Every
call gets a separate interpreter and these layers, each enough for one threat:

* **privileges**: as root (these machines run as root, where ``RLIMIT_NPROC`` is not enforced
  and every file is writable) the code runs under a fresh unprivileged uid/gid picked per call,
  with no supplementary groups: host files are protected by ordinary permissions, the process
  limit counts only this call's processes, and every leftover is found by its uid.
* **namespaces**: a new network namespace (only a down loopback: nothing is reachable, and
  abstract Unix sockets are per network namespace), a new pid namespace (when its init exits
  the kernel kills and reaps everything left inside: no zombie outlives the call even where the
  host's pid 1 never reaps), a new IPC namespace (System V shared memory, semaphores and queues
  made inside vanish with it, and the host's are unseen) and a new mount namespace with its own
  ``/proc`` (the code sees only its own processes, not the host's command lines), an empty
  read-only ``/sys`` (the host's lists its network interfaces) and fresh size-capped tmpfs on
  ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run`` and the working folder, wherever ``TMPDIR``
  put it (host sockets there are out of reach, nothing lands on the host's disk, and whatever
  the code leaves vanishes with the namespace). Without root, a user namespace is tried first
  so these still work where allowed.
* **seccomp** (libseccomp, through ctypes), for every process of the sandbox, including one
  started by ``fork`` + ``execv`` of a fresh interpreter (a filter survives both): no new user
  namespace (``unshare``/``clone`` with ``CLONE_NEWUSER`` fail with EPERM, ``clone3``, whose
  flags a filter cannot read, with ENOSYS so libc falls back to ``clone``); ``socket``,
  ``socketpair`` and ``io_uring_setup`` fail with EPERM; other architectures' syscall entry
  points are killed (libseccomp's bad-arch action).
* **resource limits**: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (files and the
  captured output), ``RLIMIT_NPROC`` (fork bombs), ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` = 0.
* **wall clock**: the call's own process group is killed at the deadline, then any process of
  the sandbox uid (one that escaped the group with ``setsid``).
* **hygiene**: a fresh temporary working directory (deleted afterwards), a scrubbed environment
  (no inherited secrets), stdin closed, ``python -I -S``, and ``socket`` creation disabled in the
  interpreter before the code runs (a third lock on the network door).
* **validated results**: the parent counts the tests itself; a report whose counts are not
  integers, whose total differs, or that claims more passes than tests, scores 0. A set-up
  failure travels on its own pipe, which the runner closes before the code starts: a
  ``setup_error`` the code prints or writes anywhere is its own failure (0), never a
  :class:`SandboxError`.

Why no ``preexec_fn``: the scoring process runs torch's thread pools, and Python documents
``preexec_fn`` as unsafe with threads (it may deadlock in the forked child). The set-up runs
instead at the top of the runner, in a fresh single-threaded interpreter, before the code is
even parsed. Because the sandbox uid may be unable to read the interpreter's own library (here
it lives under ``/root``, mode 0700), the runner imports the common standard modules while
still privileged; the code can import those and nothing else from there.

Not defended: a program that claims passes it did not earn within the real count (it runs in
the process that reports; only impossible claims are caught); reading world-readable host
files. Without root there is no uid switch, so the code can touch whatever the caller's user
can. Where the kernel refuses a namespace or libseccomp is not installed, that layer is missing
from :attr:`SandboxResult.isolation` and the others still apply. The sandbox protects the
host's integrity, not the reward from adversarial code. A set-up failure (e.g. the uid switch
or a mount) raises :class:`SandboxError` rather than running the code half-contained.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from curation.errors import CurationError

# Imported while privileged: stdlib modules generated solutions and tests commonly use.
PRELOAD = ("math", "cmath", "re", "json", "string", "collections", "collections.abc", "itertools",
           "functools", "operator", "heapq", "bisect", "typing", "random", "statistics", "fractions",
           "decimal", "datetime", "copy", "dataclasses", "enum", "textwrap", "array", "numbers",
           "shutil", "socket", "io")


class SandboxError(CurationError):
    """The sandbox could not be set up (the code was not run): a machine problem, not a score of 0."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one call; the defaults fit short test-suite runs of generated functions."""

    timeout_s: float = 5.0  # wall clock of the whole call
    memory_mb: int = 256  # address space (RLIMIT_AS) of every sandbox process
    max_processes: int = 32  # RLIMIT_NPROC of the per-call uid: what a fork bomb runs into
    max_open_files: int = 64
    max_file_mb: int = 16  # largest file the code may write, its captured output included
    max_output_chars: int = 10_000  # how much output the result keeps (the tail)
    block_sockets: bool = True  # False only to test the network namespace on its own (no socket rules either)
    tmp_mb: int = 64  # size of each private tmpfs (/tmp, /var/tmp, /dev/shm, /run, the working folder)
    uid_range: tuple[int, int] = (2_000_000, 2_100_000)  # unused ids for the per-call uid/gid

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 32 or self.max_processes < 3:
            raise ValueError("SandboxLimits: timeout_s > 0, memory_mb >= 32, max_processes >= 3")


@dataclass(frozen=True)
class SandboxResult:
    """What a run produced: tests passed of total, and why it stopped when it did not finish."""

    passed: int
    total: int
    timed_out: bool
    error: str | None
    output: str = ""  # tail of stdout and stderr
    isolation: tuple[str, ...] = ()  # mechanisms in force, e.g. ("netns", "ipcns", "proc", "sys", "nouserns")
    uid: int | None = None  # the per-call uid (None when the caller is not root)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_python(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 256,
               limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` then ``tests`` in the sandbox; the test protocol is in :data:`RUNNER`.

    Each top-level ``assert`` and each ``test_*`` function of ``tests`` is one test; test code
    with neither is one test that passes when it runs without an exception.
    """
    lim = replace(limits or SandboxLimits(), timeout_s=timeout_s, memory_mb=memory_mb)
    uid = _pick_uid(lim.uid_range) if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="sandbox-ctl-") as ctl:  # 0700: only we read it
        work = Path(tempfile.mkdtemp(prefix="sandbox-"))
        try:
            if uid is not None:
                os.chown(work, uid, uid)
            return _run(code, tests, lim, uid, Path(ctl), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _run(code: str, tests: str, lim: SandboxLimits, uid: int | None, ctl: Path, work: Path) -> SandboxResult:
    (ctl / "code.py").write_text(code)
    (ctl / "tests.py").write_text(tests)
    read_end, write_end = os.pipe()
    setup_read, setup_write = os.pipe()  # set-up failures only: closed before the code runs
    cfg = {"code": str(ctl / "code.py"), "tests": str(ctl / "tests.py"), "result_fd": write_end, "uid": uid,
           "setup_fd": setup_write, "preload": PRELOAD, "limits": asdict(lim), "work": str(work)}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    try:
        with open(ctl / "output", "w+b") as log:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", RUNNER, json.dumps(cfg)], cwd=work,
                                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        pass_fds=(write_end, setup_write), start_new_session=True)
            finally:
                os.close(write_end)
                os.close(setup_write)
            timed_out = _wait(proc.pid, lim.timeout_s)
            _kill_all(proc, uid)
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4 * lim.max_output_chars))  # tail only
            output = log.read().decode("utf-8", "replace")[-lim.max_output_chars:]
        setup, report = _read_report(setup_read), _read_report(read_end)
    finally:
        os.close(read_end)
        os.close(setup_read)
    if isinstance(setup, dict) and setup.get("setup_error"):
        raise SandboxError(str(setup["setup_error"])[:500])
    return _result(report, proc.returncode, timed_out, output, uid, count_tests(tests))


def count_tests(tests: str) -> int:
    """How many tests `tests` holds, counted as the runner does (0 when it does not parse)."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 0
    asserts = sum(isinstance(s, ast.Assert) for s in tree.body)
    funcs = sum(isinstance(s, ast.FunctionDef) and s.name.startswith("test_") for s in tree.body)
    return (asserts + funcs) or 1


def _result(report: dict | None, returncode: int, timed_out: bool, output: str, uid: int | None,
            expected: int) -> SandboxResult:
    report = report if isinstance(report, dict) else {}  # a "setup_error" here is the code's own: no count, 0
    isolation = tuple(str(i) for i in report.get("isolation", ()) if isinstance(i, str))
    finished = bool(report) and report.get("final", True) is not False
    if timed_out or not finished:  # killed, or the code ended the process before the report
        cpu_killed = returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)
        why = "timed out" if timed_out or cpu_killed else f"no result (exit status {returncode})"
        return SandboxResult(0, expected, timed_out or cpu_killed, why, output, isolation, uid)
    passed, total = report.get("passed"), report.get("total")
    if type(passed) is not int or type(total) is not int or total != expected or not 0 <= passed <= total:
        why = f"invalid result from the sandbox (claimed {passed!r} of {total!r}; the tests hold {expected})"
        return SandboxResult(0, expected, False, why[:300], output, isolation, uid)
    error = report.get("error")
    return SandboxResult(passed, total, False, None if error is None else str(error)[:500], output, isolation, uid)


def _wait(pid: int, timeout_s: float) -> bool:
    """Wait for the runner without reaping it (its pid keeps naming the group); True on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False
        time.sleep(0.01)
    return True


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """SIGKILL the runner's process group, then every live process of the sandbox uid; reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        for _ in range(200):  # a fork bomb may still be forking: repeat until none is left
            pids = live_pids_of_uid(uid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
    proc.wait()


def live_pids_of_uid(uid: int) -> list[int]:
    """Host pids of the processes (not zombies) whose real, effective or saved uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                          if ":" in line)
        except OSError:  # exited while we looked
            continue
        uids = {int(u) for u in fields.get("Uid", "").split()[:3]}
        if uid in uids and not fields.get("State", "").strip().startswith(("Z", "X")):
            found.append(int(entry))
    return found


def _pick_uid(uid_range: tuple[int, int]) -> int:
    """A uid no process uses now, so the process limit and the leftover sweep see only this call."""
    rng = random.SystemRandom()
    for _ in range(100):
        uid = rng.randrange(*uid_range)
        if not live_pids_of_uid(uid):
            return uid
    raise RuntimeError("no free sandbox uid in range")


def _read_report(fd: int) -> dict | None:
    """The runner's JSON report; non-blocking, every writer is dead by now."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    lines = [line for line in b"".join(chunks).split(b"\n") if line.strip()]
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
    return None


# The runner's source, executed as ``python -I -S -c RUNNER CONFIG_JSON`` (see sandbox_runner.py).
RUNNER = (Path(__file__).resolve().parent / "runner.py").read_text()
