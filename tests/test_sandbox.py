"""Hostile programs against rl/grading/sandbox.py: each test asserts that one kind of escape is contained.

The isolation found on this machine decides what can hold (sandbox.isolation_level()): as root with
namespaces every case runs; where a layer is missing the test that needs it skips, naming the layer.
The drop-only level (root without namespaces) is also forced, for the cases it must hold by itself.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from rl.grading import sandbox
from rl.grading.sandbox import SandboxLimits, run_program

REPO = Path(__file__).resolve().parents[1]
FAST = SandboxLimits(cpu_seconds=2, wall_seconds=2.0, memory_mb=256, processes=16, file_mb=4.0)


def _level() -> str:
    return sandbox.isolation_level(FAST.user)


def _prog(src: str, **values) -> str:
    """Dedented source with {name} filled from values (repr'd), so programs can be written inline."""
    return textwrap.dedent(src).format(**{k: repr(v) for k, v in values.items()})


def _pids_of_uid(uid: int) -> list[int]:
    """Live processes of uid (a zombie waits for the machine's init to reap it: it runs nothing)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines() if ":" in ln)
        except OSError:
            continue
        if uid in map(int, fields["Uid"].split()) and fields["State"].split()[0] not in ("Z", "X"):
            out.append(int(status.parent.name))
    return out


def _pids_with_marker(marker: str) -> list[int]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:  # a zombie's cmdline is empty
            if marker.encode() in cmdline.read_bytes():
                out.append(int(cmdline.parent.name))
        except OSError:
            pass
    return out


def _run_uid(stdout: str) -> int | None:
    """The uid a program printed on its first line as 'uid N' (the host's uid when the sandbox drops to one)."""
    first = stdout.splitlines()[0] if stdout else ""
    return int(first.split()[1]) if first.startswith("uid ") else None


@pytest.fixture
def drop_only(monkeypatch):
    """Force the level a root parent falls back to without namespaces: the drop to a fresh uid alone."""
    if os.geteuid() != 0:
        pytest.skip("the drop to an unprivileged uid needs a root parent")
    import pwd
    iso = sandbox.Isolation("drop-user", (), False, gid=pwd.getpwnam("nobody").pw_gid)
    monkeypatch.setattr(sandbox, "isolation", lambda user="nobody": iso)
    return iso


@pytest.mark.parametrize("body, wall, limit", [
    ("while True:\n    pass\n", 8.0, "CPU-time"),                 # burns CPU: RLIMIT_CPU (1 s) ends it first
    ("import time\nwhile True:\n    time.sleep(1)\n", 1.5, "wall-time"),  # sleeps: only the wall kill ends it
])
def test_infinite_loop_times_out(body, wall, limit):
    t = time.monotonic()
    res = run_program(body, SandboxLimits(cpu_seconds=1, wall_seconds=wall))
    assert res.status == "timeout" and limit in res.message, res.message
    assert time.monotonic() - t < 6.0       # 1 s of CPU on a loaded 2-core machine, or 1.5 s wall; not forever


def test_fork_bomb_is_held_and_leaves_nothing():
    src = _prog("""
        import os, time
        print("uid", os.getuid(), flush=True)
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    while True:           # every child is a bomb too
                        try:
                            os.fork()
                        except OSError:
                            time.sleep(0.01)
                n += 1
        except OSError as e:
            print("refused after", n, e.errno, flush=True)
        time.sleep(60)
    """)
    t = time.monotonic()
    res = run_program(src, FAST)
    assert res.status == "timeout" and time.monotonic() - t < 6.0
    refused = [ln for ln in res.stdout.splitlines() if ln.startswith("refused after")]
    assert refused and int(refused[0].split()[2]) < FAST.processes   # RLIMIT_NPROC held
    uid = _run_uid(res.stdout)
    if sandbox.isolation(FAST.user).drops:
        assert uid is not None and uid != os.getuid() and _pids_of_uid(uid) == []   # nothing survives
    # the machine stays usable: this process can still start processes, and the next run passes
    assert subprocess.run(["true"]).returncode == 0
    assert run_program("print('ok')", FAST).stdout == "ok\n"


@pytest.mark.parametrize("src", [
    "x = bytearray(4 << 30)\n",                                                  # one 4 GiB allocation
    "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",       # 16 MiB at a time
])
def test_memory_bomb_hits_the_address_space_limit(src):
    res = run_program(src, FAST)
    assert res.status in ("fail", "error") and "MemoryError" in res.message
    assert res.seconds < FAST.wall_seconds   # refused at once, not swapped until the wall kill


def test_huge_file_write_is_capped(tmp_path):
    src = _prog("""
        import errno
        written = 0
        try:
            with open("big.bin", "wb") as f:
                for _ in range(64):
                    f.write(b"x" * (1 << 20)); f.flush(); written += 1 << 20
        except OSError as e:
            print("stopped", written, errno.errorcode[e.errno], flush=True)
        import sys
        for _ in range(64):                     # and 64 MiB more to stdout
            sys.stdout.write("y" * (1 << 20))
    """)
    res = run_program(src, FAST)
    first = res.stdout.splitlines()[0].split()
    assert first[0] == "stopped" and int(first[1]) <= FAST.file_mb * (1 << 20) and first[2] in ("EFBIG", "ENOSPC")
    assert len(res.stdout) <= FAST.output_bytes       # what is read back is capped too
    assert res.status in ("fail", "error")            # stdout hit RLIMIT_FSIZE as well


def _outside_write_program(paths: list[str], new_files: list[str]) -> str:
    return _prog("""
        import os
        for p in {paths}:
            for what, act in (("overwrite", lambda: open(p, "w").write("owned")), ("delete", lambda: os.remove(p))):
                try:
                    act()
                    print(what, p, "DONE")
                except OSError as e:
                    print(what, p, "refused", e.errno)
        for p in {new}:
            try:
                open(p, "w").write("owned")
                print("create", p, "DONE")
            except OSError as e:
                print("create", p, "refused", e.errno)
    """, paths=paths, new=new_files)


def _check_outside_writes(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    sentinel.chmod(0o666)                      # even a world-writable file in the parent's folder
    marker = f"arbor-sandbox-escape-{uuid.uuid4().hex}"
    new_files = [str(REPO / marker), str(tmp_path / marker), str(Path.home() / marker)]
    try:
        res = run_program(_outside_write_program([str(sentinel), str(REPO / "README.md")], new_files), FAST)
        assert res.status == "pass", res.message
        assert "DONE" not in res.stdout, res.stdout
        assert sentinel.read_text() == "keep me"
        assert (REPO / "README.md").stat().st_size > 0
        assert not any(Path(p).exists() for p in new_files)
    finally:
        for p in new_files:
            Path(p).unlink(missing_ok=True)


def test_cannot_write_or_delete_outside_its_folder(tmp_path):
    if os.geteuid() != 0 and not _level().startswith("userns"):
        pytest.skip(f"isolation {_level()!r}: the program runs as this user and may write what it may")
    if os.geteuid() != 0:
        pytest.skip("user-namespace root keeps the caller's file permissions: its files are writable")
    _check_outside_writes(tmp_path)


def test_cannot_write_or_delete_outside_its_folder_drop_only(tmp_path, drop_only):
    _check_outside_writes(tmp_path)


def test_cannot_touch_world_writable_folders():
    """A world-writable folder others use (like /tmp/ray's sessions) is hidden behind a private /tmp."""
    if "mountns" not in _level():
        pytest.skip(f"isolation {_level()!r}: no mount namespace, so /tmp, /var/tmp and /dev/shm are shared "
                    f"(README 'Sandbox')")
    shared = Path(tempfile.mkdtemp(prefix="arbor-shared-", dir="/tmp"))
    try:
        shared.chmod(0o777)                    # no sticky bit, as /tmp/ray's session folders
        sentinel = shared / "sentinel.txt"
        sentinel.write_text("keep me")
        sentinel.chmod(0o666)
        res = run_program(_outside_write_program([str(sentinel)], [str(shared / "new.txt")])
                          + "open('/tmp/left-behind', 'w').write('x')\n", FAST)
        assert res.status == "pass", res.message
        assert "DONE" not in res.stdout, res.stdout
        assert sentinel.read_text() == "keep me" and not (shared / "new.txt").exists()
        assert not Path("/tmp/left-behind").exists()   # its own /tmp vanished with it
    finally:
        import shutil
        shutil.rmtree(shared, ignore_errors=True)


def test_no_network_connection():
    if "netns" not in _level():
        pytest.skip(f"isolation {_level()!r}: no network namespace on this machine (unshare --net failed), "
                    f"so the program shares the network; run it in a container with --network none (README)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        src = _prog("""
            import socket
            for host in ("127.0.0.1", "localhost"):
                try:
                    socket.create_connection((host, {port}), timeout=1).sendall(b"hello")
                    print("connected", host)
                except OSError as e:
                    print("refused", host, type(e).__name__)
        """, port=port)
        res = run_program(src, FAST)
        assert res.status == "pass", res.message
        assert "connected" not in res.stdout and "refused 127.0.0.1" in res.stdout
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()                  # no connection arrived


def test_cannot_read_the_parents_environment(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ARBOR_TEST_SECRET", secret)
    # a process that holds the secret in its initial environment (/proc/PID/environ), as a parent would
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={**os.environ})
    try:
        src = _prog("""
            import getpass, os
            print(dict(os.environ))
            print(getpass.getuser())     # a fresh uid has no passwd entry: USER answers
            for pid in ({me}, {helper}):
                try:
                    print(open(f"/proc/{{pid}}/environ", "rb").read())
                except OSError as e:
                    print("refused", pid, e.errno)
            for d in os.listdir("/proc"):     # and every process it can see
                try:
                    print(open(f"/proc/{{d}}/environ", "rb").read())
                except OSError:
                    pass
        """, me=os.getpid(), helper=helper.pid)
        res = run_program(src, FAST)
        assert res.status == "pass", res.message
        assert secret not in res.stdout
        env = eval(res.stdout.splitlines()[0])  # noqa: S307 -- the dict it printed
        # the sandbox's own few variables (PWD, OLDPWD: its init's cd into the folder), none of this process's
        assert set(env) <= {"PATH", "LANG", "HOME", "USER", "LOGNAME", "OMP_NUM_THREADS", "PYTHONHASHSEED",
                            "LC_CTYPE", "PWD", "OLDPWD"}
        assert res.stdout.splitlines()[1] == "sandbox"
    finally:
        helper.kill()
        helper.wait()


def _check_signals_do_not_reach():
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        src = _prog("""
            import os, signal
            for name, act in (("test", lambda: os.kill({me}, signal.SIGKILL)),
                              ("test group", lambda: os.killpg(os.getpgid({me}), signal.SIGKILL)),
                              ("helper", lambda: os.kill({helper}, signal.SIGKILL)),
                              ("parent", lambda: os.kill(os.getppid(), signal.SIGKILL)),
                              ("everyone", lambda: os.kill(-1, signal.SIGKILL))):
                try:
                    act()
                    print(name, "sent", flush=True)
                except OSError as e:
                    print(name, "refused", e.errno, flush=True)
        """, me=os.getpid(), helper=helper.pid)
        res = run_program(src, FAST)         # had a signal reached this process, pytest would be gone
        assert "test refused" in res.stdout and "helper refused" in res.stdout, res.stdout
        time.sleep(0.1)
        assert helper.poll() is None          # the test's own child survives too
    finally:
        helper.kill()
        helper.wait()


def test_cannot_signal_the_parent():
    if os.geteuid() != 0 and "pidns" not in _level():
        pytest.skip(f"isolation {_level()!r}: the program runs as this user and may signal its processes")
    _check_signals_do_not_reach()


def test_cannot_signal_the_parent_drop_only(drop_only):
    _check_signals_do_not_reach()


# where the program leads its own session already (no namespaces: start_new_session), a fork does it
_LEAVE_GROUP = ("try:\n    os.setsid()\nexcept OSError:\n    if os.fork():\n        os._exit(0)\n    os.setsid()\n"
                "while True:\n    time.sleep(1)\n")


def _daemon_program(marker: str, then: str) -> str:
    """Double-fork a daemon (setsid between the forks) that sleeps with the marker in its argv, then `then`."""
    return _prog("""
        import os, sys, time
        print("uid", os.getuid(), flush=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", {marker}])
            os._exit(0)
        time.sleep(0.3)
    """, marker=marker) + then


@pytest.mark.parametrize("then", [
    "print('bye')\n",                                      # the program exits normally
    "while True:\n    time.sleep(1)\n",                    # the program is killed at the wall time
    _LEAVE_GROUP,                                          # ... after leaving its session and group itself
])
def test_no_child_outlives_the_run(then):
    marker = f"arbor-daemon-{uuid.uuid4().hex}"
    try:
        res = run_program(_daemon_program(marker, then), SandboxLimits(wall_seconds=1.5))
        assert res.status in ("pass", "timeout"), res.message
        time.sleep(0.1)
        assert _pids_with_marker(marker) == []
        uid = _run_uid(res.stdout)
        if sandbox.isolation(FAST.user).drops:
            assert _pids_of_uid(uid) == []
    finally:
        for pid in _pids_with_marker(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("then", ["print('bye')\n", _LEAVE_GROUP])
def test_no_child_outlives_the_run_drop_only(then, drop_only):
    marker = f"arbor-daemon-{uuid.uuid4().hex}"
    try:
        res = run_program(_daemon_program(marker, then), SandboxLimits(wall_seconds=1.5))
        assert res.status in ("pass", "timeout"), res.message
        assert _pids_with_marker(marker) == [] and _pids_of_uid(_run_uid(res.stdout)) == []
    finally:
        for pid in _pids_with_marker(marker):
            os.kill(pid, signal.SIGKILL)


def test_concurrent_runs_have_their_own_uids():
    """A fork bomb in one run does not starve another running beside it (RLIMIT_NPROC counts per uid)."""
    if not (sandbox.isolation(FAST.user).drops and sandbox.isolation(FAST.user).uid is None):
        pytest.skip(f"isolation {_level()!r}: concurrent runs share one uid and so RLIMIT_NPROC")
    from concurrent.futures import ThreadPoolExecutor
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n"
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(run_program, bomb, FAST)
        time.sleep(0.5)                        # the bomb is at its limit now
        spawn = "import subprocess\nprint(subprocess.run(['true']).returncode)"   # needs a process of its own
        res = pool.submit(run_program, spawn, FAST).result()
        assert res.status == "pass" and res.stdout == "0\n", res.message
        assert held.result().status == "timeout"


@pytest.mark.parametrize("with_prlimit", [True, False])
def test_the_program_runs_under_the_limits(with_prlimit, monkeypatch):
    """Limits come from prlimit before the interpreter, or from setrlimit in a preexec_fn where there is none."""
    if not with_prlimit:
        monkeypatch.setattr(sandbox, "_prlimit_prefix", lambda limits: [])
    elif not sandbox._prlimit_prefix(FAST):
        pytest.skip("no prlimit (util-linux) on this machine")
    src = ("import resource as r\nprint([r.getrlimit(k) for k in "
           "(r.RLIMIT_CPU, r.RLIMIT_AS, r.RLIMIT_NPROC, r.RLIMIT_FSIZE, r.RLIMIT_CORE)])\n")
    res = run_program(src, FAST)
    assert res.status == "pass", res.message
    mb = 1 << 20
    assert eval(res.stdout) == [(2, 3), (256 * mb,) * 2, (16, 16), (4 * mb,) * 2, (0, 0)]  # noqa: S307
