"""The code sandbox contains what generated code can do (curation/sandbox.py).

Each test names the mechanism it relies on. The privilege tests need root (the sandbox only
switches uid when it has one to switch from); the machines this runs on are root.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from curation.sandbox.isolate import SandboxError, SandboxLimits, live_pids_of_uid, run_python

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the uid switch only happens when the caller is root")
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\ndef test_zero():\n    assert add(0, 0) == 0\n"


def _all_pids_of_uid(uid: int) -> list[int]:
    """Every process of ``uid``, zombies included (live_pids_of_uid skips zombies)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines = Path(f"/proc/{entry}/status").read_text().splitlines()
        except OSError:
            continue
        uids = next((line.split()[1:4] for line in lines if line.startswith("Uid:")), [])
        if str(uid) in uids:
            found.append(int(entry))
    return found


def test_correct_code_passes_every_test_and_wrong_code_none():
    good = run_python("def add(a, b):\n    return a + b\n", TESTS)
    bad = run_python("def add(a, b):\n    return a - b + 1\n", TESTS)
    assert (good.passed, good.total, good.error, good.timed_out) == (3, 3, None, False)
    assert good.pass_rate == 1.0
    assert (bad.passed, bad.total, bad.timed_out) == (0, 3, False) and "AssertionError" in bad.error


def test_broken_code_scores_zero_of_all_tests():
    res = run_python("def add(a, b) return a\n", TESTS)
    assert (res.passed, res.total) == (0, 3) and "SyntaxError" in res.error


def test_infinite_loop_times_out_on_the_wall_clock():
    """Mechanism: the parent's deadline, then SIGKILL to the process group and the sandbox uid."""
    start = time.monotonic()
    res = run_python("while True:\n    pass\n", TESTS, timeout_s=1)
    assert res.timed_out and res.passed == 0 and res.total == 3
    assert time.monotonic() - start < 1 + 2


def test_memory_bomb_fails_cleanly():
    """Mechanism: RLIMIT_AS; the allocation raises MemoryError inside the sandbox."""
    start = time.monotonic()
    res = run_python("x = bytearray(10**10)\n", TESTS, memory_mb=256)
    assert not res.timed_out and res.passed == 0 and "MemoryError" in res.error
    assert time.monotonic() - start < 5


@as_root
def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    """Mechanisms: a fresh uid with RLIMIT_NPROC (enforced once not root), the pid namespace
    (its teardown kills and reaps everything inside) and the parent's sweep of the uid."""
    start = time.monotonic()
    res = run_python("import os\nwhile True:\n    os.fork()\n", TESTS, timeout_s=3)
    assert time.monotonic() - start < 3 + 2
    assert res.passed == 0 and res.uid is not None and "uid" in res.isolation
    assert live_pids_of_uid(res.uid) == []
    if "pidns" in res.isolation:  # even zombies are gone: the namespace's init reaped them
        assert _all_pids_of_uid(res.uid) == []
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0


PRIVATE_MOUNTS = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # the sandbox mounts its own tmpfs there


def _canary_parent() -> Path | None:
    """A host folder the sandbox still sees and its uid can reach: beside this test file, unless the
    checkout itself lies under a private mount (a clone in /tmp), then /opt, /srv or /mnt."""
    for cand in (Path(__file__).resolve().parent, Path("/opt"), Path("/srv"), Path("/mnt")):
        if str(cand).startswith(PRIVATE_MOUNTS) or not (cand.is_dir() and os.access(cand, os.W_OK)):
            continue
        if all(p.stat().st_mode & 0o001 for p in [cand, *cand.parents]):  # every level traversable
            return cand
    return None


@pytest.fixture
def canary():
    """A root-owned world-readable file in a root-owned 0755 directory outside pytest's 0700 tmp
    and outside /tmp (which the sandbox replaces with its own)."""
    parent = _canary_parent()
    if parent is None:
        pytest.skip("no host folder outside the sandbox's private mounts that its uid can reach")
    folder = Path(tempfile.mkdtemp(prefix=".canary-", dir=parent))
    folder.chmod(0o755)
    (folder / "canary.txt").write_text("keep me")
    (folder / "canary.txt").chmod(0o644)
    yield folder / "canary.txt"
    shutil.rmtree(folder, ignore_errors=True)


@as_root
def test_host_files_survive_deletion_attempts(canary):
    """Mechanism: the unprivileged uid; the code can *read* the canary (so the path is reachable)
    but removing, truncating or chmod-ing it, or deleting its folder, fails on permissions."""
    code = f"""
import os, shutil
CANARY = {str(canary)!r}
attempts = [lambda: os.remove(CANARY), lambda: shutil.rmtree(os.path.dirname(CANARY)),
            lambda: open(CANARY, "w").close(), lambda: os.chmod(CANARY, 0o777),
            lambda: os.rename(CANARY, CANARY + ".moved")]
denied = 0
for attempt in attempts:
    try:
        attempt()
    except PermissionError:
        denied += 1
"""
    tests = "assert open(CANARY).read() == 'keep me'\nassert denied == len(attempts)\n"
    res = run_python(code, tests)
    assert (res.passed, res.total) == (2, 2), res.error
    assert canary.read_text() == "keep me"
    assert stat.S_IMODE(canary.stat().st_mode) == 0o644 and canary.stat().st_uid == 0


class _Listener:
    """A TCP server on 127.0.0.1 that records whether anything ever connected."""

    def __init__(self, sock: socket.socket | None = None):
        self.sock = sock or socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1] if self.sock.family == socket.AF_INET else None
        self.received: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                self.received.append(conn.recv(100) or b"<connected>")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _connect_code(port: int) -> str:
    return (f"import socket, errno\ntry:\n    s = socket.socket()\n    s.settimeout(1)\n"
            f"    s.connect(('127.0.0.1', {port}))\n    s.sendall(b'leak')\n    outcome = 'connected'\n"
            f"except OSError as e:\n    outcome = errno.errorcode.get(e.errno, type(e).__name__)\n")


@pytest.mark.parametrize("block_sockets", [True, False], ids=["default", "namespace-only"])
def test_no_network_to_a_listening_host_port(block_sockets):
    """Mechanisms: `socket` disabled in the interpreter (default) and, on its own, the network
    namespace, where loopback is down: the connect fails with ENETUNREACH."""
    listener = _Listener()
    try:
        res = run_python(_connect_code(listener.port), "assert outcome != 'connected'\n",
                         limits=SandboxLimits(block_sockets=block_sockets))
        time.sleep(0.3)  # give a (wrongly) accepted connection time to show up
    finally:
        listener.close()
    assert listener.received == []
    assert (res.passed, res.total) == (1, 1), res.error
    if not block_sockets:
        if "netns" not in res.isolation:
            pytest.skip("no network namespace on this machine")
        check = run_python(_connect_code(listener.port), "assert outcome == 'ENETUNREACH', outcome\n",
                           limits=SandboxLimits(block_sockets=False))
        assert check.passed == 1, check.error


def test_environment_is_scrubbed_and_workdir_removed(monkeypatch):
    """Mechanisms: an explicit minimal environment; a fresh temporary cwd deleted afterwards."""
    monkeypatch.setenv("CURATION_TEST_SECRET", "hunter2")
    code = "import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('x')\n"
    res = run_python(code, "assert 'CURATION_TEST_SECRET' not in os.environ\nassert os.path.exists('scratch.txt')\n")
    assert (res.passed, res.total) == (2, 2), res.error
    workdir = Path(res.output.strip().splitlines()[0])
    assert workdir.name.startswith("sandbox-") and not workdir.exists()


def test_output_is_capped():
    """Mechanism: RLIMIT_FSIZE bounds what the code writes; the result keeps only a tail."""
    res = run_python("print('x' * 10**8)\n", "assert True\n", limits=SandboxLimits(max_output_chars=1000))
    assert len(res.output) <= 1000 and "File too large" in res.error


@as_root
def test_code_never_runs_when_privileges_cannot_be_dropped(tmp_path):
    """uid 2**32-1 is setresuid's "leave unchanged": the runner stays root, so it must refuse."""
    marker = tmp_path / "ran"
    with pytest.raises(SandboxError, match="could not drop root privileges"):
        run_python(f"open({str(marker)!r}, 'w').write('x')\n", "assert True\n",
                   limits=SandboxLimits(uid_range=(2**32 - 1, 2**32)))
    assert not marker.exists()


# --- issue 13: /proc, sockets for every process, forged results, leftovers --------------------

def _kernel_allows_private_proc() -> bool:
    """Whether this kernel lets us make pid + mount namespaces with a fresh /proc (probed with
    util-linux `unshare`, independently of the sandbox)."""
    if not shutil.which("unshare"):
        return False
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    cmd = ["unshare", *user, "--mount", "--pid", "--fork", "--mount-proc", "true"]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


PRIVATE_PROC = _kernel_allows_private_proc()
needs_namespaces = pytest.mark.skipif(not PRIVATE_PROC, reason="this kernel or container forbids pid/mount "
                                      "namespaces (unshare --mount --pid --mount-proc failed)")
HAS_SECCOMP = bool(__import__("ctypes.util", fromlist=["find_library"]).find_library("seccomp"))

@needs_namespaces
def test_proc_shows_only_the_sandbox_processes():
    """Mechanism: a /proc mounted in the sandbox's own pid and mount namespaces. Before: the
    code listed every host process with its command line."""
    code = ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "lines = [open(f'/proc/{p}/cmdline', 'rb').read() for p in pids]\n")
    res = run_python(code, "assert len(pids) <= 3, pids\nassert not any(b'pytest' in c for c in lines)\n")
    assert (res.passed, res.total) == (2, 2), res.error
    assert "proc" in res.isolation


class _UnixListener(_Listener):
    """A Unix socket in the host's /tmp that records any connection."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="sock-", dir="/tmp")) / "s.sock"
        self.path.parent.chmod(0o755)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(self.path))
        self.path.chmod(0o777)
        sock.listen()
        super().__init__(sock)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.path.parent, ignore_errors=True)


FRESH = "/usr/bin/python3"


def _exec_connect_code(path: Path) -> str:
    """fork + execv of a fresh interpreter (no Python-level socket block there) that connects."""
    script = (f"import socket, errno\ntry:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({str(path)!r})\n"
              f"    s.sendall(b'leak')\n    out = 'connected'\nexcept OSError as e:\n"
              f"    out = errno.errorcode.get(e.errno, str(e))\nopen('outcome', 'w').write(out)\n")
    return (f"import os\npid = os.fork()\nif pid == 0:\n    os.execv({FRESH!r}, ['python3', '-I', '-S', '-c', {script!r}])\n"
            f"os.waitpid(pid, 0)\noutcome = open('outcome').read() if os.path.exists('outcome') else 'no outcome'\n")


@pytest.mark.skipif(not os.access(FRESH, os.X_OK), reason=f"needs an interpreter the sandbox uid can run ({FRESH})")
@pytest.mark.parametrize("block_sockets", [
    pytest.param(True, id="seccomp", marks=pytest.mark.skipif(not HAS_SECCOMP, reason="libseccomp not installed")),
    pytest.param(False, id="mount-namespace-only", marks=needs_namespaces)])
def test_a_fresh_interpreter_cannot_reach_a_host_unix_socket(block_sockets):
    """Before: fork + execv of a fresh interpreter skipped the in-interpreter block and
    connected to a Unix socket in /tmp. Now seccomp refuses socket(2) to every process (EPERM),
    and on its own the private /tmp hides the socket (ENOENT)."""
    listener = _UnixListener()
    try:
        res = run_python(_exec_connect_code(listener.path), "assert outcome != 'connected', outcome\n",
                         limits=SandboxLimits(block_sockets=block_sockets))
        time.sleep(0.3)
    finally:
        listener.close()
    assert listener.received == []
    assert (res.passed, res.total) == (1, 1), res.error
    assert ("seccomp" if block_sockets else "tmpfs") in res.isolation
    want = "EPERM" if block_sockets else "ENOENT"
    check = run_python(_exec_connect_code(listener.path), f"assert outcome == {want!r}, outcome\n",
                       limits=SandboxLimits(block_sockets=block_sockets))
    assert check.passed == 1, check.error


FORGE = "import json, os, sys\nfd = json.loads(sys.argv[1])['result_fd']\nos.write(fd, b'{}\\n')\nos._exit(0)\n"


@pytest.mark.parametrize("claim", ['{"passed": 99, "total": 1}', '{"passed": 1, "total": 1}',
                                   '{"passed": 3.0, "total": 3}', '{"passed": true, "total": 3}',
                                   '{"passed": -1, "total": 3}'])
def test_a_forged_result_scores_zero(claim):
    """Mechanism: the parent counts the tests (3 here) and validates the report. Before:
    {"passed": 99, "total": 1} gave a pass rate of 99."""
    res = run_python(FORGE.replace("{}", claim.replace('"', '\\"')), TESTS)
    assert (res.passed, res.total) == (0, 3) and 0 <= res.pass_rate <= 1
    assert "invalid result" in res.error


@needs_namespaces
def test_tmp_and_shm_do_not_outlive_the_call():
    """Mechanism: private tmpfs on /tmp, /var/tmp and /dev/shm. Before: files there stayed."""
    token = os.urandom(6).hex()
    places = [f"/tmp/leak-{token}", f"/var/tmp/leak-{token}", f"/dev/shm/leak-{token}"]
    code = f"for p in {places!r}:\n    open(p, 'w').write('x')\n"
    res = run_python(code, f"import os\nassert all(os.path.exists(p) for p in {places!r})\n")
    assert res.passed == 1, res.error
    assert not any(Path(p).exists() for p in places)
    again = run_python("import os\nseen = [p for p in %r if os.path.exists(p)]\n" % places, "assert seen == []\n")
    assert again.passed == 1, again.error


# --- issue 22: IPC, user namespaces, /sys, the working folder, forged set-up errors -------------

LIBC_CODE = "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
IPC_CREAT, IPC_RMID = 0o1000, 0


def _shm_id(key: int) -> int:
    """The host's System V shared-memory segment of ``key`` (-1: none)."""
    import ctypes
    return ctypes.CDLL(None, use_errno=True).shmget(key, 0, 0)


def _shm_remove(key: int) -> None:
    import ctypes
    if (shm := _shm_id(key)) >= 0:
        ctypes.CDLL(None).shmctl(shm, IPC_RMID, None)


def _kernel_allows_ipc_namespaces() -> bool:
    """Probed with util-linux `unshare --ipc`, independently of the sandbox."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return bool(shutil.which("unshare")) and subprocess.run(["unshare", *user, "--ipc", "true"],
                                                            capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _kernel_allows_ipc_namespaces(), reason="this kernel or container forbids IPC "
                    "namespaces (unshare --ipc failed)")
def test_system_v_shared_memory_does_not_outlive_the_call():
    """Mechanism: a new IPC namespace. Before: a segment made inside stayed pinned in the host's
    memory until `ipcrm`, and the host's segments were visible (by key) from inside."""
    import ctypes
    import random
    key, host_key = random.sample(range(1 << 20, 1 << 30), 2)
    host_seg = ctypes.CDLL(None, use_errno=True).shmget(host_key, 4096, IPC_CREAT | 0o666)
    assert host_seg >= 0
    try:
        code = LIBC_CODE + f"made = libc.shmget({key}, 1 << 20, {IPC_CREAT | 0o600})\nseen = libc.shmget({host_key}, 0, 0)\n"
        res = run_python(code, "assert made >= 0\nassert seen == -1\n")
        assert "ipcns" in res.isolation
        assert (res.passed, res.total) == (2, 2), res.error
        assert _shm_id(key) == -1  # gone with the namespace
    finally:
        _shm_remove(key)
        _shm_remove(host_key)


@pytest.mark.skipif(not HAS_SECCOMP, reason="libseccomp not installed")
@pytest.mark.skipif(not os.access(FRESH, os.X_OK), reason=f"needs an interpreter the sandbox uid can run ({FRESH})")
@pytest.mark.parametrize("block_sockets", [True, False], ids=["default", "without-socket-rules"])
def test_the_code_cannot_make_a_user_namespace(block_sockets):
    """Mechanism: seccomp refuses unshare/clone with CLONE_NEWUSER (EPERM), also in a fresh
    interpreter started with fork + execv. Before: unshare(CLONE_NEWUSER) succeeded inside."""
    code = LIBC_CODE + ("rc = libc.unshare(0x10000000)\nerr = errno.errorcode.get(ctypes.get_errno())\n"
                        "import os\npid = os.fork()\nif pid == 0:\n"
                        f"    os.execv({FRESH!r}, ['python3', '-I', '-S', '-c', 'import ctypes, os; "
                        "os._exit(10 + (ctypes.CDLL(None).unshare(0x10000000) == 0))'])\n"
                        "fresh = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n")
    res = run_python(code, "assert (rc, err) == (-1, 'EPERM'), (rc, err)\nassert fresh == 10, fresh\n",
                     limits=SandboxLimits(block_sockets=block_sockets))
    assert "nouserns" in res.isolation
    assert (res.passed, res.total) == (2, 2), res.error


@needs_namespaces
def test_sys_hides_the_host_network_interfaces():
    """Mechanism: an empty read-only tmpfs on /sys. Before: /sys/class/net listed eth0 and the rest."""
    code = "import os\nnets = os.listdir('/sys/class/net') if os.path.isdir('/sys/class/net') else []\n"
    res = run_python(code, "assert set(nets) <= {'lo'}, nets\n")
    assert (res.passed, res.total) == (1, 1), res.error
    assert "sys" in res.isolation


@needs_namespaces
def test_working_folder_is_a_capped_tmpfs_whatever_tmpdir_says(monkeypatch):
    """Mechanism: a tmpfs of `tmp_mb` mounted on the working folder. Before: with TMPDIR outside
    /tmp the code wrote to the host's disk (4 x 4 MiB here, past an 8 MiB cap)."""
    parent = _canary_parent()
    if parent is None:
        pytest.skip("no host folder outside the sandbox's private mounts")
    tmpdir = Path(tempfile.mkdtemp(prefix=".tmpdir-", dir=parent))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    code = ("import errno, os\nerr = None\ntry:\n    for i in range(4):\n        with open(f'f{i}', 'wb') as f:\n"
            "            for _ in range(4):\n                f.write(b'x' * (1 << 20))\n"
            "except OSError as e:\n    err = errno.errorcode.get(e.errno)\n"
            "mounts = {line.split()[4]: line.split(' - ')[1].split()[0] for line in open('/proc/self/mountinfo')}\n"
            "here = os.getcwd()\n")
    try:
        res = run_python(code, "assert err == 'ENOSPC', err\nassert mounts.get(here) == 'tmpfs', here\n",
                         limits=SandboxLimits(tmp_mb=8))
        assert (res.passed, res.total) == (2, 2), res.error
        assert list(tmpdir.iterdir()) == []  # the working folder itself is gone, nothing left
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


FORGED_SETUP = ("import os\nfor fd in range(3, 64):\n    try:\n"
                "        os.write(fd, b'{\"setup_error\": \"a machine problem\"}\\n')\n"
                "    except OSError:\n        pass\nos._exit(0)\n")


def test_a_forged_setup_error_is_the_codes_own_failure():
    """Mechanism: set-up failures travel on a pipe the runner closes before the code runs.
    Before: the code printing or writing {"setup_error": ...} raised SandboxError (NICE stops
    the run blaming the machine)."""
    res = run_python(FORGED_SETUP, TESTS)
    assert (res.passed, res.total, res.pass_rate) == (0, 3, 0.0)
    # the code's own failure either way: which fds it scribbled on depends on what the host
    # process has open (the result pipe: "invalid result"; its own stdout closed: "no result")
    assert "invalid result" in res.error or "no result" in res.error, res.error
    printed = run_python('print(\'{"setup_error": "a machine problem"}\')\n' + FORGED_SETUP, TESTS)
    assert (printed.passed, printed.total) == (0, 3)


@pytest.mark.skipif(not os.access(FRESH, os.X_OK), reason=f"needs an interpreter the sandbox uid can run ({FRESH})")
def test_threads_and_subprocesses_still_work_under_the_filter():
    """clone3 fails with ENOSYS in the sandbox; libc must fall back to clone for threads and spawns."""
    code = ("import subprocess, threading\nout = []\nt = threading.Thread(target=lambda: out.append(1))\nt.start()\n"
            f"t.join()\nproc = subprocess.run([{FRESH!r}, '-I', '-S', '-c', 'print(7)'], capture_output=True)\n")
    res = run_python(code, "assert out == [1]\nassert proc.stdout == b'7\\n', proc\n")
    assert (res.passed, res.total) == (2, 2), res.error
