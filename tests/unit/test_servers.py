from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamrec_dev.servers import (
    ONE_THREAD_PER_PROCESS,
    ManagedProcess,
    ServerError,
    ServiceServer,
    _kafka_cluster_id,
    _session_listens_on,
    free_port,
    one_thread_per_process,
)


def test_kafka_cluster_ids_never_look_like_options() -> None:
    # 1 in 64 base64 ids starts with "-", which kafka-storage's parser takes for a flag.
    ids = {_kafka_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    # Below the kernel's ephemeral range, where outgoing connections take their local ports.
    assert all(20000 <= port < 32000 for port in ports)


def test_a_listener_is_told_apart_by_its_session(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert _session_listens_on(os.getsid(0), port) is True
        assert _session_listens_on(os.getpid() + 1_000_000, port) is False
    assert _session_listens_on(os.getsid(0), port) is False


def test_a_listener_is_found_when_another_fd_closes_during_the_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readlink = os.readlink
    failed: list[str] = []

    def closing_meanwhile(path: str | os.PathLike[str]) -> str:
        # The listener's own process: its first fd is gone by the time it is read.
        if not failed and str(path).startswith(f"/proc/{os.getpid()}/fd/"):
            failed.append(str(path))
            raise FileNotFoundError(path)
        return readlink(path)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setattr(os, "readlink", closing_meanwhile)
        assert _session_listens_on(os.getsid(0), port) is True
    assert failed


@dataclass
class _Sleeper(ManagedProcess):
    """A child that never binds its port, while the test process takes the port meanwhile."""

    foreign: socket.socket | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    def prepare(self) -> None:
        # After start()'s "port taken" check and before the child binds: the race it loses.
        self.foreign = socket.socket()
        self.foreign.bind(("127.0.0.1", self.port))
        self.foreign.listen()


def test_a_server_whose_port_another_process_answers_on_fails_fast(tmp_path: Path) -> None:
    server = _Sleeper(name="sleeper", home=tmp_path, port=free_port())
    started = time.monotonic()
    try:
        with pytest.raises(ServerError, match="not from this server"):
            server.start(timeout=30)
    finally:
        if server.foreign is not None:
            server.foreign.close()
    assert time.monotonic() - started < 10
    assert not server.running()  # the child was stopped, not leaked


@dataclass
class _Portless(ManagedProcess):
    """A process that serves no port (port 0), healthy while it runs, like the demo stream."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    def healthy(self) -> bool:
        return self.running()


def test_a_process_without_a_port_starts_on_its_own_check(tmp_path: Path) -> None:
    server = _Portless(name="portless", home=tmp_path, port=0)
    try:
        assert server.start(timeout=10)
        assert server.running()
    finally:
        server.stop()
    assert not server.running()


def test_a_process_runs_at_the_niceness_it_was_given(tmp_path: Path) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    for niceness in (0, 7):
        server = _Portless(name=f"nice{niceness}", home=tmp_path, port=0, niceness=niceness)
        try:
            server.start(timeout=10)
            pid = server.pid()
            assert pid is not None
            # ``nice`` sets it, then execs the command in the same process: wait for the exec.
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:2] != [b"-c"]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, own + niceness)
            # Its own session is scheduled as one group (autogroup): the group's priority too,
            # or the nice value above ranks the process against nothing but itself.
            group = Path(f"/proc/{pid}/autogroup")
            if group.exists():
                assert group.read_text().split()[-1] == str(niceness)
        finally:
            server.stop()


def test_services_get_one_thread_pool_each_unless_their_own_env_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "8")  # the caller's shell does not leak in
    server = ServiceServer(
        name="trainer", home=tmp_path, port=free_port(), env={"TF_NUM_INTEROP_THREADS": "2"}
    )
    env = server.environment()
    assert env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["TF_NUM_INTEROP_THREADS"] == "2"
    assert env["OMP_NUM_THREADS"] == "1"


def test_a_benchmark_process_keeps_what_its_environment_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ONE_THREAD_PER_PROCESS:  # restored after the test, whatever it sets
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "4")
    one_thread_per_process()
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "4"
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "1"
