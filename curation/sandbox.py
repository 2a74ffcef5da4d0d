"""Run untrusted generated Python against unit tests, contained (METHODS.md §3: NICE's code reward).

NICE rewards a sampled program by its unit-test pass rate, so model output is executed. Every
call gets a separate interpreter and these layers, each enough for one threat:

* **privileges**: as root (these machines run as root, where ``RLIMIT_NPROC`` is not enforced
  and every file is writable) the code runs under a fresh unprivileged uid/gid picked per call,
  with no supplementary groups: host files are protected by ordinary permissions, the process
  limit counts only this call's processes, and every leftover is found by its uid.
* **namespaces**: a new network namespace (only a down loopback: nothing is reachable) and a new
  pid namespace (the code sees no host process, and when its init exits the kernel kills and
  reaps everything left inside: no zombie outlives the call even where the host's pid 1 never
  reaps). Without root, a user namespace is tried first so both still work where allowed.
* **resource limits**: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (files and the
  captured output), ``RLIMIT_NPROC`` (fork bombs), ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` = 0.
* **wall clock**: the call's own process group is killed at the deadline, then any process of
  the sandbox uid (one that escaped the group with ``setsid``).
* **hygiene**: a fresh temporary working directory (deleted afterwards), a scrubbed environment
  (no inherited secrets), stdin closed, ``python -I -S``, and ``socket`` creation disabled in the
  interpreter before the code runs (a second lock on the network door).

Why no ``preexec_fn``: the scoring process runs torch's thread pools, and Python documents
``preexec_fn`` as unsafe with threads (it may deadlock in the forked child). The set-up runs
instead at the top of the runner, in a fresh single-threaded interpreter, before the code is
even parsed. Because the sandbox uid may be unable to read the interpreter's own library (here
it lives under ``/root``, mode 0700), the runner imports the common standard modules while
still privileged; the code can import those and nothing else from there.

Not defended: a program that forges its own result (it runs in the process that reports it);
reading world-readable host files; filling world-writable places (``/tmp``) with many files
(``RLIMIT_FSIZE`` bounds each one, not their number). Without root there is no uid switch, so
the code can touch whatever the caller's user can. The sandbox protects the host's integrity,
not the reward from adversarial code. A set-up failure (e.g. the uid switch) raises
:class:`SandboxError` rather than running the code half-contained.
"""

from __future__ import annotations

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
    block_sockets: bool = True  # False only to test the network namespace on its own
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
    isolation: tuple[str, ...] = ()  # mechanisms that were in force, e.g. ("netns", "pidns", "uid")
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
    cfg = {"code": str(ctl / "code.py"), "tests": str(ctl / "tests.py"), "result_fd": write_end, "uid": uid,
           "preload": PRELOAD, "limits": asdict(lim)}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    try:
        with open(ctl / "output", "w+b") as log:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", RUNNER, json.dumps(cfg)], cwd=work,
                                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        pass_fds=(write_end,), start_new_session=True)
            finally:
                os.close(write_end)
            timed_out = _wait(proc.pid, lim.timeout_s)
            _kill_all(proc, uid)
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4 * lim.max_output_chars))  # tail only
            output = log.read().decode("utf-8", "replace")[-lim.max_output_chars:]
        report = _read_report(read_end)
    finally:
        os.close(read_end)
    return _result(report, proc.returncode, timed_out, output, uid)


def _result(report: dict | None, returncode: int, timed_out: bool, output: str, uid: int | None) -> SandboxResult:
    report = report or {}
    if report.get("setup_error"):
        raise SandboxError(report["setup_error"])
    isolation = tuple(report.get("isolation", ()))
    total = int(report.get("total", 0))
    finished = bool(report) and report.get("final", True)
    if timed_out or not finished:  # killed, or the code ended the process before the report
        cpu_killed = returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)
        why = "timed out" if timed_out or cpu_killed else f"no result (exit status {returncode})"
        return SandboxResult(0, total, timed_out or cpu_killed, why, output, isolation, uid)
    return SandboxResult(int(report["passed"]), total, False, report.get("error"), output, isolation, uid)


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


# The runner, run as ``python -I -S -c RUNNER CONFIG_JSON``. It starts privileged, reads the
# code and tests, preloads stdlib modules, unshares namespaces, then forks: the child (pid 1 of
# the new pid namespace) sets the limits, drops to the sandbox uid and forks the worker, which
# disables sockets, runs the code and the tests and writes JSON reports to the result fd.
RUNNER = r'''
import ast, ctypes, json, math, os, resource, sys, types
CFG = json.loads(sys.argv[1])
LIM = CFG["limits"]
CODE, TESTS = open(CFG["code"]).read(), open(CFG["tests"]).read()
OUT = CFG["result_fd"]
ISOLATION = []
for _name in CFG["preload"]:
    try:
        __import__(_name)
    except Exception:
        pass

def report(**values):
    # One JSON line per report; the last complete line wins (the first one only gives the total).
    values["isolation"] = ISOLATION
    os.write(OUT, json.dumps(values).encode()[:30000] + b"\n")

def unshare_namespaces():
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() != 0 and libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER: caps in a new userns
        ISOLATION.append("userns")
    for flag, name in ((0x40000000, "netns"), (0x20000000, "pidns")):  # CLONE_NEWNET, CLONE_NEWPID
        if libc.unshare(flag) == 0:
            ISOLATION.append(name)

def limit():
    mb = 1024 * 1024
    cpu = math.ceil(LIM["timeout_s"]) + 1  # soft: SIGXCPU; the wall clock is the real bound
    for res, value in ((resource.RLIMIT_AS, LIM["memory_mb"] * mb), (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                       (resource.RLIMIT_FSIZE, LIM["max_file_mb"] * mb), (resource.RLIMIT_NPROC, LIM["max_processes"]),
                       (resource.RLIMIT_NOFILE, LIM["max_open_files"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, value if isinstance(value, tuple) else (value, value))
    ISOLATION.append("rlimits")

def drop_privileges():
    uid = CFG["uid"]
    if os.geteuid() != 0 or uid is None:
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() == 0 or os.getegid() == 0:
        raise PermissionError("could not drop root privileges")
    ISOLATION.append("uid")

def block_sockets():
    import socket, _socket
    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")
    for module in (socket, _socket):
        for name in ("socket", "SocketType", "socketpair", "fromfd", "create_connection", "create_server"):
            if hasattr(module, name):
                setattr(module, name, refuse)
    ISOLATION.append("nosocket")

def units(tree):
    asserts = [s for s in tree.body if isinstance(s, ast.Assert)]
    funcs = [s.name for s in tree.body if isinstance(s, ast.FunctionDef) and s.name.startswith("test_")]
    return asserts, funcs

def run_tests(ns, tree, main):
    asserts, funcs = units(tree)
    if not asserts and not funcs:
        exec(compile(tree, "tests.py", "exec"), ns)
        return 1, 1, None
    passed, first_error = 0, None
    for stmt in tree.body:
        try:
            exec(compile(ast.Module([stmt], []), "tests.py", "exec"), ns)
            passed += isinstance(stmt, ast.Assert)
        except BaseException as e:
            first_error = first_error or describe("test", e)
        guard(main)
    for name in funcs:
        try:
            ns[name]()
            passed += 1
        except BaseException as e:
            first_error = first_error or describe(name, e)
        guard(main)
    return passed, len(asserts) + len(funcs), first_error

def describe(where, e):
    return f"{where}: {type(e).__name__}: {e}"[:500]

def guard(main):
    if os.getpid() != main:  # a process the code forked: it must never report
        os._exit(1)

def work():
    if LIM["block_sockets"]:
        block_sockets()
    main = os.getpid()
    try:
        tree = ast.parse(TESTS)
    except SyntaxError as e:
        return report(passed=0, total=0, error=describe("tests", e))
    asserts, funcs = units(tree)
    total = (len(asserts) + len(funcs)) or 1
    report(passed=0, total=total, error="did not finish", final=False)
    module = types.ModuleType("solution")
    sys.modules["solution"] = module
    try:
        exec(compile(CODE, "solution.py", "exec"), module.__dict__)
    except BaseException as e:
        guard(main)
        return report(passed=0, total=total, error=describe("solution", e))
    guard(main)
    try:
        passed, total, error = run_tests(module.__dict__, tree, main)
    except BaseException as e:
        guard(main)
        return report(passed=0, total=total, error=describe("tests", e))
    report(passed=passed, total=total, error=error)

def wait_for(pid):
    # As pid 1 of the namespace this also reaps orphans; its exit kills whatever is left.
    while True:
        done, status = os.wait()
        if done == pid:
            return os.waitstatus_to_exitcode(status)

def exit_code(code):
    return 128 - code if code < 0 else code

unshare_namespaces()
child = os.fork()
if child:
    os._exit(exit_code(wait_for(child)))
try:
    limit()
    drop_privileges()
except BaseException as e:  # never run the code half-contained: tell the caller instead
    report(setup_error=describe("sandbox setup", e))
    os._exit(1)
worker = os.fork()
if worker:
    os._exit(exit_code(wait_for(worker)))
try:
    work()
finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
'''
