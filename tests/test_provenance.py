"""bench/provenance.py: the commit, package versions and machine that every bench JSON records."""
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from bench.provenance import PACKAGES, provenance

ROOT = Path(__file__).resolve().parents[1]


def test_provenance_fields():
    p = provenance()
    assert set(p) == {"commit", "versions", "machine"}
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", p["commit"]), p["commit"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert p["commit"].removesuffix("-dirty") == head
    assert set(p["versions"]) == {"python", *PACKAGES}
    assert p["versions"]["python"] == platform.python_version()
    for name in PACKAGES:
        assert p["versions"][name] == importlib.metadata.version(name), name
    assert p["machine"].startswith(f"{platform.machine()}, {os.cpu_count()} CPU cores, ")


def test_dirty_follows_the_working_tree(tmp_path, monkeypatch):
    """A clean clone's commit has no suffix; an edited tracked file adds -dirty."""
    import bench.provenance as prov
    repo = tmp_path / "repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, env=env, capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout.strip()
    repo.mkdir()
    run("init", "-q")
    (repo / "f.txt").write_text("a\n")
    run("add", "f.txt")
    run("commit", "-q", "-m", "one")
    monkeypatch.setattr(prov, "ROOT", repo)
    assert prov.commit() == run("rev-parse", "HEAD")
    (repo / "f.txt").write_text("b\n")
    assert prov.commit() == run("rev-parse", "HEAD") + "-dirty"
