"""Run an untrusted Python program in its own process, folder and limits: the code task's test runner.

`run_program(source, limits)` writes the program to a fresh temporary folder and runs it there as
`python -I prog.py` (isolated mode: no user site, no PYTHON* variables, no script folder on sys.path):

  * its own process group (start_new_session), killed whole with SIGKILL when the run ends, at the
    wall-time limit or after a normal exit, so no child it left running outlives the run;
  * limits set by setrlimit in the child before exec: CPU seconds (RLIMIT_CPU), address space
    (RLIMIT_AS), processes of its user (RLIMIT_NPROC), bytes of one written file (RLIMIT_FSIZE, which
    also caps its captured stdout and stderr), and no core dumps;
  * a minimal environment (PATH, LANG, HOME = its folder): nothing of the parent's environment;
  * stdin is the harness's to use (`stdin` argument), stdout and stderr go to files outside its folder
    and are read back up to `limits.output_bytes`;
  * the folder is deleted afterwards.

When the machine allows it (see `isolation()`), two more layers, found once per process:

  * as root: `unshare --net --pid --fork --kill-child` then `setpriv` to an unprivileged user
    (`limits.user`, default nobody). The program has no network (a new network namespace with only a
    down loopback), is pid 1 of its own pid namespace (when it exits every process it started is
    killed by the kernel, even one that called setsid), cannot signal or read /proc of the parent
    (other uid), and cannot write files the parent's user owns. RLIMIT_NPROC only binds a non-root
    user, so the drop is what makes it count.
  * not root: `unshare --user --map-root-user --net --pid --fork --kill-child` when unprivileged user
    namespaces are enabled; otherwise none of these, and the program shares the network and runs as
    the calling user (then only the rlimits, the process group and the folder hold).

What it does NOT do (README "Sandbox"): no seccomp or syscall filter; the whole filesystem stays
readable wherever the user may read; world-writable places (/tmp, /dev/shm) stay writable; RLIMIT_NPROC
counts every process of the sandbox user, so concurrent runs share it; no cgroup, so RLIMIT_AS is per
process. For untrusted models' code, run the sandbox actors in a container as well (README).
"""
from __future__ import annotations

import functools
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
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
    user: str = "nobody"             # the unprivileged user a root parent drops to
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


@functools.lru_cache(maxsize=None)
def isolation(user: str = "nobody") -> tuple[str, ...]:
    """The command prefix that isolates a run on this machine (namespaces, user drop), () when none works.

    Tried once per process with a real `true` run, so a machine that forbids namespaces falls back quietly;
    `isolation_level()` says which one was found.
    """
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if unshare is None:
        return ()
    ns = [unshare, "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() == 0:
        if setpriv is None:
            return ()
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            return ()
        prefix = (*ns, "--", setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--")
    else:
        prefix = (unshare, "--user", "--map-root-user", *ns[1:], "--")
    try:
        ok = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else ()


def isolation_level(user: str = "nobody") -> str:
    """'drop-user+netns+pidns' (root), 'userns+netns+pidns' (not root) or 'none' (rlimits and process group only)."""
    prefix = isolation(user)
    if not prefix:
        return "none"
    return "drop-user+netns+pidns" if "--clear-groups" in prefix else "userns+netns+pidns"


def _interpreter(limits: SandboxLimits, dropping: bool) -> str:
    if limits.python:
        return limits.python
    if dropping:  # this interpreter may live where the sandbox user cannot read (/root/.pyenv)
        return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    return sys.executable


def _set_limits(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec (preexec_fn): only async-signal-safe-ish calls."""
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits.file_mb * mb),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path, limit: int) -> str:
    with path.open("rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def run_program(source: str, limits: SandboxLimits | None = None, *, stdin: str = "") -> RunResult:
    """Run `source` as a Python program under the limits; never raises for anything the program does."""
    limits = limits or SandboxLimits()
    prefix = isolation(limits.user)
    dropping = "--clear-groups" in prefix
    start = time.monotonic()
    # outer folder: the parent's, not writable by a dropped sandbox user; inner folder: the program's cwd
    outer = Path(tempfile.mkdtemp(prefix="arbor-sandbox-"))
    try:
        work = outer / "work"
        work.mkdir()
        (work / "prog.py").write_text(source, encoding="utf-8")
        if dropping:
            pw = pwd.getpwnam(limits.user)
            os.chmod(outer, 0o755)
            os.chown(work, pw.pw_uid, pw.pw_gid)
            os.chown(work / "prog.py", pw.pw_uid, pw.pw_gid)
        (outer / "stdin").write_text(stdin, encoding="utf-8")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work),
               "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        cmd = [*prefix, _interpreter(limits, dropping), "-I", "prog.py"]
        with (outer / "stdin").open("rb") as fin, (outer / "out").open("wb") as fout, \
                (outer / "err").open("wb") as ferr:
            try:
                proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=fin, stdout=fout, stderr=ferr,
                                        start_new_session=True, close_fds=True,
                                        preexec_fn=functools.partial(_set_limits, limits))
            except OSError as e:
                return RunResult("error", f"could not start the program: {e}", time.monotonic() - start)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)  # the group id is the child's pid (start_new_session); kills what it left running
            proc.wait()
        seconds = time.monotonic() - start
        out, err = _read(outer / "out", limits.output_bytes), _read(outer / "err", limits.output_bytes)
        rc = proc.returncode
        tail = err.strip()[-2000:]
        if timed_out:
            return RunResult("timeout", f"killed at the wall-time limit ({limits.wall_seconds:g} s)", seconds, out, rc)
        if rc == 0:
            return RunResult("pass", tail, seconds, out, rc)
        # through `unshare --fork` a signal death of the program shows as exit 128 + signal
        sig = -rc if rc < 0 else rc - 128 if rc > 128 and prefix else None
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and seconds >= limits.cpu_seconds):
            return RunResult("timeout", f"killed at the CPU-time limit ({limits.cpu_seconds} s)", seconds, out, rc)
        if sig == signal.SIGXFSZ:
            return RunResult("error", f"killed at the file-size limit ({limits.file_mb:g} MB)", seconds, out, rc)
        if sig is not None and sig > 0:
            return RunResult("error", f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
                             + (f": {tail}" if tail else ""), seconds, out, rc)
        return RunResult("fail", tail or f"exit status {rc}", seconds, out, rc)
    finally:
        shutil.rmtree(outer, ignore_errors=True)
