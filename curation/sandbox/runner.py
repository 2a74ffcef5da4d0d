"""The sandbox's runner, run by curation/sandbox.py as ``python -I -S -c <this source> CONFIG_JSON``.

It starts privileged in a fresh interpreter: reads the code and tests, preloads stdlib
modules, unshares namespaces, then forks. The child (pid 1 of the new pid namespace) mounts
its private /proc, /sys and tmpfs, sets the limits, drops to the sandbox uid, loads the seccomp
filter, closes the setup fd (only it may report a set-up failure, and the code never holds it)
and forks the worker, which disables sockets in the interpreter, runs the code and the tests
and writes JSON reports to the result fd. Never imported (`sandbox.RUNNER` is its text).
"""

import ast
import ctypes
import ctypes.util
import errno
import json
import math
import os
import resource
import sys
import types

ISOLATION = []

def report(**values):
    # One JSON line per report; the last complete line wins (the first one only gives the total).
    values["isolation"] = ISOLATION
    os.write(OUT, json.dumps(values).encode()[:30000] + b"\n")

LIBC = ctypes.CDLL(None, use_errno=True)

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWNS, CLONE_NEWIPC = 0x10000000, 0x40000000, 0x20000000, 0x20000, 0x8000000

def unshare_namespaces():
    if os.geteuid() != 0 and LIBC.unshare(CLONE_NEWUSER) == 0:  # caps in a new userns
        ISOLATION.append("userns")
    # ipcns: System V shared memory, semaphores and queues made inside die with the namespace
    # (without it one call could pin host shared memory until `ipcrm`) and the host's are unseen.
    for flag, name in ((CLONE_NEWNET, "netns"), (CLONE_NEWPID, "pidns"), (CLONE_NEWNS, "mntns"), (CLONE_NEWIPC, "ipcns")):
        if LIBC.unshare(flag) == 0:
            ISOLATION.append(name)

def mount(source, target, fstype, flags, data=None):
    if LIBC.mount(source.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")

def private_mounts():
    # In the new mount namespace, as pid 1 of the new pid namespace: a /proc of this namespace
    # only, and empty capped tmpfs on the shared writable places (they die with the namespace).
    if "mntns" not in ISOLATION:
        return
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 0x4000, 0x40000
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    if "pidns" in ISOLATION:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        ISOLATION.append("proc")
    # An empty read-only /sys: the host's sysfs lists its network interfaces (and hardware),
    # whatever network namespace the reader is in.
    mount("tmpfs", "/sys", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,nr_inodes=16,mode=555")
    ISOLATION.append("sys")
    opts = f"size={LIM['tmp_mb']}m,nr_inodes=4096"
    for place in ("/tmp", "/var/tmp", "/dev/shm", "/run"):
        if os.path.isdir(place) and not os.path.islink(place):
            mount("tmpfs", place, "tmpfs", MS_NOSUID | MS_NODEV, opts + ",mode=1777")
    # The working folder gets its own capped tmpfs too: the caller's TMPDIR may put it on the
    # host's disk, which the code could otherwise fill.
    work, uid = CFG["work"], CFG["uid"]
    os.makedirs(work, 0o700, exist_ok=True)  # under /tmp it is now inside the private tmpfs
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, opts + ",mode=700")
    if uid is not None and os.geteuid() == 0:
        os.chown(work, uid, uid)
    os.chdir(work)
    ISOLATION.append("tmpfs")

class ArgCmp(ctypes.Structure):  # libseccomp's struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

def seccomp_rules():
    # (syscall, errno, flag that arg 0 must hold for the rule to apply, or 0 for every call).
    # No new user namespace: unshare(2) and clone(2) with CLONE_NEWUSER fail with EPERM (a user
    # namespace would hand the code capabilities over fresh namespaces, a large kernel surface).
    # clone3(2) keeps its flags in memory a filter cannot read: ENOSYS, and libc falls back to clone.
    rules = [(b"unshare", errno.EPERM, CLONE_NEWUSER), (b"clone", errno.EPERM, CLONE_NEWUSER), (b"clone3", errno.ENOSYS, 0)]
    if LIM["block_sockets"]:  # io_uring can open sockets too
        rules += [(b"socket", errno.EPERM, 0), (b"socketpair", errno.EPERM, 0), (b"io_uring_setup", errno.EPERM, 0)]
    return rules

def load_seccomp():
    # Every process of the sandbox, whatever it execs, gets this filter. Needs libseccomp;
    # without it, skipped (the layer is then missing from the isolation list).
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        name = ctypes.util.find_library("seccomp")
        if not name:
            return
        lib = ctypes.CDLL(name)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW by default
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for name, err, flag in seccomp_rules():
            nr = lib.seccomp_syscall_resolve_name(name)
            if nr < 0:
                continue
            cmp = ArgCmp(0, 7, flag, flag)  # SCMP_CMP_MASKED_EQ: arg0 & flag == flag
            rc = lib.seccomp_rule_add_array(ctx, 0x00050000 | err, nr, 1 if flag else 0, ctypes.byref(cmp) if flag else None)
            if rc < 0:
                raise OSError(-rc, f"seccomp rule for {name.decode()}")
        rc = lib.seccomp_load(ctx)  # also sets no_new_privs
        if rc < 0:
            raise OSError(-rc, "seccomp_load")
    finally:
        lib.seccomp_release(ctx)
    ISOLATION.append("nouserns")
    if LIM["block_sockets"]:
        ISOLATION.append("seccomp")

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
    import _socket
    import socket
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


if __name__ == "__main__":
    CFG = json.loads(sys.argv[1])
    LIM = CFG["limits"]
    CODE, TESTS = open(CFG["code"]).read(), open(CFG["tests"]).read()
    OUT = CFG["result_fd"]
    for _name in CFG["preload"]:
        try:
            __import__(_name)
        except Exception:
            pass
    SETUP = CFG["setup_fd"]  # the only channel for a set-up failure; the code never holds it
    unshare_namespaces()
    child = os.fork()
    if child:
        os.close(SETUP)
        os._exit(exit_code(wait_for(child)))
    try:
        private_mounts()
        limit()
        drop_privileges()
        load_seccomp()
    except BaseException as e:  # never run the code half-contained: tell the caller instead
        os.write(SETUP, json.dumps({"setup_error": describe("sandbox setup", e)}).encode()[:30000] + b"\n")
        os._exit(1)
    os.close(SETUP)
    worker = os.fork()
    if worker:
        os._exit(exit_code(wait_for(worker)))
    try:
        work()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
