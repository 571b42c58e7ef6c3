"""The master's pid file: written safely in a directory others may write to, never over a live one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from prefork_tcp import pidfile


def test_writes_this_process_pid_readable_by_all(tmp_path):
    path = tmp_path / "server.pid"
    pidfile.write(str(path))
    assert path.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert pidfile.read(str(path)) == os.getpid()
    assert os.listdir(tmp_path) == ["server.pid"]


def test_a_symlink_at_the_old_temporary_name_does_not_redirect_the_write(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "server.pid"
    planted = tmp_path / f"server.pid.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    pidfile.write(str(path))
    assert victim.read_text() == "precious\n"
    assert path.read_text() == f"{os.getpid()}\n" and not path.is_symlink()
    assert planted.is_symlink() and os.readlink(planted) == str(victim)


def test_a_symlink_at_the_pidfile_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "server.pid"
    path.symlink_to(victim)
    pidfile.write(str(path))
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == f"{os.getpid()}\n"


def test_a_live_pid_is_refused_and_left_in_place(tmp_path):
    path = tmp_path / "server.pid"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(f"{other.pid}\n")
        with pytest.raises(pidfile.PidfileError, match=f"process {other.pid} is still running"):
            pidfile.write(str(path))
        assert path.read_text() == f"{other.pid}\n"
    finally:
        other.kill()
        other.wait()
    assert os.listdir(tmp_path) == ["server.pid"]


def test_a_dead_pid_is_replaced(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    path = tmp_path / "server.pid"
    path.write_text(finished.stdout)
    pidfile.write(str(path))
    assert pidfile.read(str(path)) == os.getpid()


@pytest.mark.parametrize("content", ["", "junk\n", "0\n", "-1\n", "99999999999999999999\n"])
def test_content_that_names_no_process_is_replaced(tmp_path, content):
    path = tmp_path / "server.pid"
    path.write_text(content)
    assert pidfile.read(str(path)) is None
    pidfile.write(str(path))
    assert pidfile.read(str(path)) == os.getpid()


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        pidfile.write(str(tmp_path / "server.pid"))
    assert os.listdir(tmp_path) == []


def test_a_relative_path_is_written_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pidfile.write("server.pid")
    assert (tmp_path / "server.pid").read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == ["server.pid"]


def test_remove_deletes_only_our_own_pid(tmp_path):
    theirs, ours = tmp_path / "theirs.pid", tmp_path / "ours.pid"
    theirs.write_text("1\n")
    pidfile.remove(str(theirs))
    assert theirs.exists()
    pidfile.write(str(ours))
    pidfile.remove(str(ours))
    assert not ours.exists()
