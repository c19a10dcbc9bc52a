"""Readiness reports to systemd (Type=notify), against real unix datagram sockets."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from cryophile import sdnotify

from tests.fsrig import FsRig, fskeys, needs_fuse  # noqa: F401 (fixture)


@pytest.fixture
def listener(tmp_path):
    """A datagram socket standing in for systemd's; yields (path, socket)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        yield str(path), sock


def test_sends_every_field_in_one_datagram(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.notify("READY=1", "STATUS=mounted on /mnt/x")
    assert sock.recv(4096) == b"READY=1\nSTATUS=mounted on /mnt/x"


def test_abstract_socket(monkeypatch):
    name = f"cryophile-test-{uuid.uuid4()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_without_systemd_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.notify("READY=1")


@pytest.mark.expect_log
def test_a_socket_that_is_gone_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sdnotify.notify("READY=1")
    assert "cannot notify systemd" in caplog.text


@needs_fuse
@pytest.mark.timeout(120)
def test_mount_reports_ready_once_mounted(tmp_path, fskeys, listener):  # noqa: F811
    path, sock = listener
    rig = FsRig(tmp_path / "fs", fskeys[0])
    with rig.mounted(env={"NOTIFY_SOCKET": path}) as mnt:
        message = sock.recv(4096).decode()
        assert os.path.ismount(mnt)
        assert message.splitlines() == ["READY=1", f"STATUS=mounted on {mnt}"]
