"""Run an untrusted Python program in its own process, folder and limits: the code task's test runner.

`run_program(source, limits)` writes the program to a fresh temporary folder and runs it there as
`python -I prog.py` (isolated mode: no user site, no PYTHON* variables, no script folder on sys.path):

  * its own process group (start_new_session), killed whole with SIGKILL when the run ends, at the
    wall-time limit or after a normal exit;
  * limits set by `prlimit` just before the interpreter (setrlimit in a preexec_fn where there is no
    prlimit, which is not safe with threads): CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS),
    processes of its user (RLIMIT_NPROC), bytes of one written file (RLIMIT_FSIZE, which also caps its
    captured stdout and stderr), and no core dumps;
  * a minimal environment (PATH, LANG, HOME = its folder, USER): nothing of the parent's environment;
  * stdin is the harness's to use (`stdin` argument), stdout and stderr go to files outside its folder
    and are read back up to `limits.output_bytes`;
  * the folder is deleted afterwards.

When the machine allows it (see `isolation()`), more layers, found once per process by trying them:

  * as root: `unshare --net --pid --mount --mount-proc --fork --kill-child`, a private tmpfs over each
    world-writable folder (/tmp, /var/tmp, /dev/shm, /run/lock), then `setpriv` to a uid of the run's
    own (1048576 + a random slot: no account's files are its own) and `limits.user`'s group. The program
    has no network (a new network namespace with only a down loopback); runs in its own pid namespace
    (a root sh as its init, _INIT_SCRIPT) and sees only its processes in /proc; cannot signal or read
    /proc of the parent; can write only the private tmpfs folders, its own folder a copy on the new /tmp
    (all gone with the run); and concurrent runs
    do not share RLIMIT_NPROC, which binds only a non-root user. When the run ends the namespace's init
    is SIGKILLed (the kernel then kills every process in it, even one that called setsid) and every
    process left with the run's uid is killed.
  * root where namespaces fail: only the drop to the run's uid (Popen user=/group=); the uid sweep still
    kills what it left running, but the network, /proc and world-writable folders are shared.
  * not root: `unshare --user --map-root-user --net --pid --mount ...` when unprivileged user
    namespaces are enabled (the program keeps the caller's file permissions); otherwise none of these,
    and the program shares the network and runs as the calling user (then only the rlimits, the
    process group and the folder hold: a child that calls setsid can outlive the run).

What it does NOT do (README "Sandbox"): no seccomp or syscall filter, so a kernel exploit escapes; the
whole filesystem stays readable wherever the sandbox user may read; no cgroup, so RLIMIT_AS is per
process (up to `processes` times `memory_mb` in all) and nothing bounds disk or CPU use below the
limits. For untrusted models' code, run the sandbox actors in a container as well (README).
"""
from __future__ import annotations

import contextlib
import functools
import os
import pwd
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["pass", "fail", "timeout", "error"]


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 10            # RLIMIT_CPU; past it the kernel sends SIGXCPU, then SIGKILL
    wall_seconds: float = 10.0       # the process group is SIGKILLed at this wall time
    memory_mb: int = 1024            # RLIMIT_AS, virtual address space of each process
    processes: int = 32              # RLIMIT_NPROC, processes and threads of the sandbox user
    file_mb: float = 16.0            # RLIMIT_FSIZE, the largest file it may write (stdout/stderr included)
    output_bytes: int = 65536        # how much of stdout and stderr is read back
    user: str = "nobody"             # a root parent drops to this user's group (and its uid when a fresh one fails)
    python: str = ""                 # interpreter; "" = this one, or /usr/bin/python3 when dropping to `user`

    def __post_init__(self) -> None:
        for key in ("cpu_seconds", "wall_seconds", "memory_mb", "processes", "file_mb", "output_bytes"):
            if not getattr(self, key) > 0:
                raise ValueError(f"sandbox limits: {key} must be > 0, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class RunResult:
    status: Status     # pass: exit 0; fail: nonzero exit; timeout: wall or CPU limit; error: could not run / killed
    message: str       # why, and the tail of stderr
    seconds: float     # wall time of the run
    stdout: str = ""
    returncode: int | None = None


# Per-run uids: above any account (Debian allocates below 60000, nobody is 65534), one per concurrent run,
# so a run cannot touch another's processes or files and RLIMIT_NPROC counts only its own processes.
_UID_BASE, _UID_SLOTS = 1 << 20, 1 << 16
_uids_in_use: set[int] = set()
_uids_lock = threading.Lock()

# World-writable folders hidden behind a private tmpfs in the mount namespace: the program may use them,
# its files vanish with the run, and it cannot reach what others keep there (/tmp/ray's sessions and logs).
_PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# The namespace's init: sh as pid 1, the program its child. Not the program itself as pid 1: the kernel
# drops signals without a handler to a namespace's init, so SIGXCPU (the CPU limit) or a program's own
# SIGTERM would not end it. $1 = 1 to mount, $2 = the work folder, $3 = each tmpfs's size in KiB, $4 = the
# folder's owner (uid:gid, "" to keep). With mounts the program runs in a copy of the work folder at the same
# path on the new /tmp, so what it writes there counts against the tmpfs size, not the host's disk (the host
# folder, the cwd, is still reachable through its reference). sh exits with the program's status (128 + N for
# signal N); when it exits the kernel kills everything left in the namespace.
_INIT_SCRIPT = (
    'm=$1; w=$2; kb=$3; own=$4; shift 4; if [ "$m" = 1 ]; then for d in ' + " ".join(_PRIVATE_DIRS) + '; do '
    'if [ -d "$d" ]; then mount -t tmpfs -o "size=${kb}k,mode=1777,nosuid,nodev" tmpfs "$d" || exit 125; fi; '
    'done; mkdir -p "$w" && cp prog.py "$w/" && { [ -z "$own" ] || chown -R "$own" "$w"; } && cd "$w" || exit 125; '
    'fi; "$@"; exit $?')


@dataclass(frozen=True)
class Isolation:
    """How runs are isolated on this machine (found by `isolation()`)."""
    level: str                     # e.g. "drop-user+mountns+netns+pidns", "userns+netns+pidns", "none"
    namespaces: tuple[str, ...]    # the unshare command up to "--"; () for none
    mounts: bool                   # a private tmpfs over each world-writable folder
    gid: int | None = None         # the sandbox group when a root parent drops privileges
    uid: int | None = None         # a fixed sandbox uid; None with `gid` set means a fresh uid per run

    @property
    def drops(self) -> bool:
        return self.gid is not None


def _command(iso: Isolation, work: Path, uid: int | None, tmpfs_kb: int, program: list[str]) -> list[str]:
    cmd = list(iso.namespaces)
    if iso.namespaces:
        owner = f"{uid}:{iso.gid}" if uid is not None else ""
        cmd += ["/bin/sh", "-c", _INIT_SCRIPT, "sh", "1" if iso.mounts else "0", str(work), str(tmpfs_kb), owner]
    if iso.namespaces and uid is not None:  # without namespaces Popen drops (user=, group=)
        cmd += [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={iso.gid}", "--clear-groups", "--"]
    return [*cmd, *program]


def _works(iso: Isolation, uid: int | None) -> bool:
    """Whether a `true` run isolated this way succeeds here."""
    work = Path(tempfile.mkdtemp(prefix="arbor-sandbox-probe-"))
    try:
        (work / "prog.py").write_text("")
        cmd = _command(iso, work, uid, 1024, [shutil.which("true") or "/bin/true"])
        drop = {"user": uid, "group": iso.gid, "extra_groups": []} if iso.drops and not iso.namespaces else {}
        return subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                              **drop).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def isolation(user: str = "nobody") -> Isolation:
    """The strongest isolation that works on this machine, tried once per process with real `true` runs.

    A machine that forbids namespaces (or mounts inside them) falls back quietly to the next level;
    `isolation_level()` names the one found.
    """
    unshare = shutil.which("unshare")
    ns = ("--net", "--pid", "--fork", "--kill-child")
    tries: list[tuple[tuple[str, ...], bool]] = []  # (unshare command, mounts)
    if unshare and os.geteuid() == 0:
        tries = [((unshare, "--mount", "--mount-proc", *ns, "--"), True), ((unshare, *ns, "--"), False)]
    elif unshare:
        user_ns = (unshare, "--user", "--map-root-user")
        tries = [((*user_ns, "--mount", "--mount-proc", *ns, "--"), True), ((*user_ns, *ns, "--"), False)]
    if os.geteuid() != 0:
        for namespaces, mounts in tries:
            iso = Isolation(("userns+mountns+" if mounts else "userns+") + "netns+pidns", namespaces, mounts)
            if _works(iso, None):
                return iso
        return Isolation("none", (), False)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"sandbox: no user {user!r} to drop to (SandboxLimits.user)") from None
    fresh = _UID_BASE + _UID_SLOTS - 1
    for namespaces, mounts in [*(t for t in tries if shutil.which("setpriv")), ((), False)]:
        level = "drop-user" + ("+mountns" if mounts else "") + ("+netns+pidns" if namespaces else "")
        for uid in (None, pw.pw_uid):  # a fresh uid per run where the kernel takes one, else the user's own
            iso = Isolation(level, namespaces, mounts, pw.pw_gid, uid)
            if _works(iso, fresh if uid is None else uid):
                return iso
    return Isolation("none", (), False)


def isolation_level(user: str = "nobody") -> str:
    """'drop-user+mountns+netns+pidns' (root, all layers) ... 'drop-user' (root, no namespaces),
    'userns+mountns+netns+pidns' ... (not root) or 'none' (rlimits and process group only)."""
    return isolation(user).level


@contextlib.contextmanager
def _run_uid(iso: Isolation):
    """The uid this run drops to: a free slot of its own, or the fixed sandbox uid; None when not dropping."""
    if not iso.drops or iso.uid is not None:
        yield iso.uid
        return
    with _uids_lock:
        # secrets, not random: processes that seed `random` alike would pick the same uids; the last is the probe's
        uid = _UID_BASE + secrets.randbelow(_UID_SLOTS - 1)
        while uid in _uids_in_use:
            uid = _UID_BASE + secrets.randbelow(_UID_SLOTS - 1)
        _uids_in_use.add(uid)
    try:
        yield uid
    finally:
        with _uids_lock:
            _uids_in_use.discard(uid)


def _interpreter(limits: SandboxLimits, dropping: bool) -> str:
    if limits.python:
        return limits.python
    if dropping:  # this interpreter may live where the sandbox user cannot read (/root/.pyenv)
        return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    return sys.executable


def _rlimits(limits: SandboxLimits) -> dict[int, tuple[int, int]]:
    mb = 1024 * 1024
    return {resource.RLIMIT_CPU: (limits.cpu_seconds, limits.cpu_seconds + 1),
            resource.RLIMIT_AS: (limits.memory_mb * mb,) * 2,
            resource.RLIMIT_NPROC: (limits.processes,) * 2,
            resource.RLIMIT_FSIZE: (int(limits.file_mb * mb),) * 2,
            resource.RLIMIT_CORE: (0, 0)}


_PRLIMIT_NAMES = {resource.RLIMIT_CPU: "cpu", resource.RLIMIT_AS: "as", resource.RLIMIT_NPROC: "nproc",
                  resource.RLIMIT_FSIZE: "fsize", resource.RLIMIT_CORE: "core"}


def _prlimit_prefix(limits: SandboxLimits) -> list[str]:
    """`prlimit --cpu=S:H ... --` (util-linux), [] where there is none."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    return [prlimit, *(f"--{_PRLIMIT_NAMES[k]}={soft}:{hard}" for k, (soft, hard) in _rlimits(limits).items()), "--"]


def _set_limits(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec (preexec_fn), only where there is no prlimit."""
    for key, value in _rlimits(limits).items():
        resource.setrlimit(key, value)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _children(pid: int) -> list[int]:
    """Pids whose parent is pid (its unreaped children cannot be recycled while it is unreaped itself)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # the fields after the ")" that ends the command name: state, ppid, ...
                if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _pids_of_uid(uid: int) -> list[int]:
    """Live processes with this uid (zombies, dead and waiting for their new parent to reap them, left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = dict(ln.split(":", 1) for ln in entry.joinpath("status").read_text().splitlines() if ":" in ln)
                if uid in map(int, fields["Uid"].split()) and not fields["State"].strip().startswith(("Z", "X")):
                    out.append(int(entry.name))
            except (OSError, ValueError, KeyError):
                pass
    return out


def _kill_uid(uid: int) -> None:
    """SIGKILL every process with this uid until none is left (a process cannot give up a uid it was dropped to)."""
    for _ in range(100):  # a fork bomb forks while it is being killed; each round kills what the last one missed
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _end_run(proc: subprocess.Popen, iso: Isolation, uid: int | None) -> None:
    """Kill everything the run started: the pid namespace, the process group, then what is left with its uid."""
    if iso.namespaces and proc.poll() is None:
        # SIGKILL the namespace's init (unshare's child, _INIT_SCRIPT): the kernel kills every process in the
        # namespace, even one that left the process group with setsid; unshare exits once they are all gone
        for pid in _children(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc.pid)  # the group id is the child's pid (start_new_session)
    proc.wait()
    if uid is not None:
        _kill_uid(uid)


def _read(path: Path, limit: int) -> str:
    with path.open("rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def run_program(source: str, limits: SandboxLimits | None = None, *, stdin: str = "") -> RunResult:
    """Run `source` as a Python program under the limits; never raises for anything the program does."""
    limits = limits or SandboxLimits()
    iso = isolation(limits.user)
    start = time.monotonic()
    # outer folder: the parent's, not writable by a dropped sandbox user; inner folder: the program's cwd
    outer = Path(tempfile.mkdtemp(prefix="arbor-sandbox-"))
    with _run_uid(iso) as uid:
        try:
            return _run(source, limits, stdin, iso, uid, outer, start)
        finally:
            shutil.rmtree(outer, ignore_errors=True)


def _run(source: str, limits: SandboxLimits, stdin: str, iso: Isolation, uid: int | None, outer: Path,
         start: float) -> RunResult:
    work = outer / "work"
    work.mkdir()
    (work / "prog.py").write_text(source, encoding="utf-8")
    if iso.drops:
        os.chmod(outer, 0o755)
        os.chown(work, uid, iso.gid)
        os.chown(work / "prog.py", uid, iso.gid)
    (outer / "stdin").write_text(stdin, encoding="utf-8")
    # USER and LOGNAME: a fresh uid has no passwd entry, so getpass.getuser() would raise without them
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "USER": "sandbox",
           "LOGNAME": "sandbox", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    # each private tmpfs (its folder, /tmp, ...) holds twice the largest file: RAM, bounded
    # prlimit sets the limits after the namespaces and the drop: they bind the program and what it starts
    prlimit = _prlimit_prefix(limits)
    cmd = _command(iso, work, uid, max(1024, int(2 * limits.file_mb * 1024)),
                   [*prlimit, _interpreter(limits, iso.drops), "-I", "prog.py"])
    drop = {"user": uid, "group": iso.gid, "extra_groups": []} if iso.drops and not iso.namespaces else {}
    with (outer / "stdin").open("rb") as fin, (outer / "out").open("wb") as fout, \
            (outer / "err").open("wb") as ferr:
        try:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=fin, stdout=fout, stderr=ferr,
                                    start_new_session=True, close_fds=True,
                                    preexec_fn=None if prlimit else functools.partial(_set_limits, limits), **drop)
        except (OSError, subprocess.SubprocessError) as e:
            return RunResult("error", f"could not start the program: {e}", time.monotonic() - start)
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        _end_run(proc, iso, uid)
    seconds = time.monotonic() - start
    out, err = _read(outer / "out", limits.output_bytes), _read(outer / "err", limits.output_bytes)
    rc = proc.returncode
    tail = err.strip()[-2000:]
    if timed_out:
        return RunResult("timeout", f"killed at the wall-time limit ({limits.wall_seconds:g} s)", seconds, out, rc)
    if rc == 0:
        return RunResult("pass", tail, seconds, out, rc)
    # through the namespace's init (sh) a signal death of the program shows as exit 128 + signal
    sig = -rc if rc < 0 else rc - 128 if rc > 128 and iso.namespaces else None
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and seconds >= limits.cpu_seconds):
        return RunResult("timeout", f"killed at the CPU-time limit ({limits.cpu_seconds} s)", seconds, out, rc)
    if sig == signal.SIGXFSZ:
        return RunResult("error", f"killed at the file-size limit ({limits.file_mb:g} MB)", seconds, out, rc)
    if sig is not None and sig > 0:
        return RunResult("error", f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
                         + (f": {tail}" if tail else ""), seconds, out, rc)
    return RunResult("fail", tail or f"exit status {rc}", seconds, out, rc)
