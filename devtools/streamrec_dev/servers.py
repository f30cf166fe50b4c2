"""Real servers for the local stack and the test suite: Kafka (KRaft), Redis, PostgreSQL, services.

The same classes back `streamrec up` and the pytest fixtures, so what a developer runs is what
the tests run. Each server lives in a home folder of its own (config, data, log, PID file) and
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_INFRA = REPO_ROOT / "infra" / "kafka"
KAFKA_LIBS = KAFKA_INFRA / "libs"


class ServerError(RuntimeError):
    """A server could not be installed, started or reached."""


# Servers listen on ports below the kernel's ephemeral range (32768-60999 on Linux), where the
# local ends of outgoing connections cannot land on a port between `free_port` and the bind.
_PORT_RANGE = range(20000, 32000)
# Ports handed out by this process: a port is free until its server binds it, which may be
# much later (a fixture builds several servers before it starts them), so the same free port
# must not go to two of them.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and this process has not handed out yet."""
    rng = random.Random()  # noqa: S311 (not for secrets)
    for _ in range(1000):
        port = rng.choice(_PORT_RANGE)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise ServerError(f"no free port in {_PORT_RANGE.start}-{_PORT_RANGE.stop - 1}")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str] | None:
    """The socket inodes listening on ``port`` (any address), or None without Linux's /proc."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            # local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 is the inode.
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if found_table else None


def _session_listens_on(session_id: int, port: int) -> bool | None:
    """Whether a process of session ``session_id`` holds the socket listening on ``port``.

    None when this cannot be told (no /proc). Servers start in a session of their own, so the
    session takes in whatever they fork (PostgreSQL's backends, a shell's children).
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) != session_id:
                continue
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            # One fd at a time: a starting server opens and closes connections meanwhile, and an
            # fd closed between the listing and its readlink must not hide the listener (session
            # 21: a loaded `make bench` failed its start on "answers, but not from this server").
            with contextlib.suppress(OSError):
                if os.readlink(fd) in targets:
                    return True
    return False


def lower_session_priority(pid: int, niceness: int) -> None:
    """Lower the scheduling priority of ``pid``'s session (Linux autogroup) by ``niceness``.

    With autogroup, the kernel's default outside a CPU cgroup of one's own (this machine),
    each session is scheduled as one group and a process's own nice value ranks it only within
    its session. Our servers each start a session of their own, so ``nice`` alone changed
    nothing between them (session 21: four busy processes in four sessions, two at nice 19,
    each got 48 % of a core; with those two sessions' groups at 19 as well, 92 % against 4 %).
    Nothing happens where there is no autogroup (the nice value then does the work).
    """
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


@dataclass
class ManagedProcess:
    """A long-running child with a PID file and a log file under ``home``.

    The PID file makes ``start`` idempotent across CLI invocations (``streamrec up`` twice does
    not start a second broker) and lets ``stop`` end exactly what was started.
    """

    name: str
    home: Path
    port: int
    # Added to the child's scheduling niceness (``nice -n``, and its session's group, see
    # ``lower_session_priority``): 0 runs it as this process runs.
    niceness: int = field(default=0, kw_only=True)
    # The child we spawned, kept so that it is reaped (and not reported as leaked) on stop.
    _child: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """Write config and data folders; called before every start."""

    def healthy(self) -> bool:
        return port_open(self.port)

    def start(self, timeout: float = 60.0) -> bool:
        """Start unless already running; return True when this call started it."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self.running():
            self.wait_healthy(timeout)
            return False
        if port_open(self.port):
            raise ServerError(f"{self.name}: port {self.port} is taken by another process")
        self.prepare()
        command = self.command()
        if self.niceness:
            command = ["nice", "-n", str(self.niceness), *command]  # exec'd: the PID is the child's
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                env=self.environment(),
                start_new_session=True,  # Ctrl-C in the CLI must not kill the stack
            )
        if self.niceness:
            lower_session_priority(process.pid, self.niceness)  # its own session: see there
        self._child = process
        self.pid_file.write_text(str(process.pid))
        try:
            self.wait_healthy(timeout)
        except ServerError:
            self.stop()
            raise
        return True

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                if self._holds_port():
                    return
                raise ServerError(
                    f"{self.name}: port {self.port} answers, but not from this server; another "
                    f"process holds it; see {self.log_file}"
                )
            if not self.running():
                raise ServerError(f"{self.name} exited during start-up; see {self.log_file}")
            time.sleep(0.1)
        raise ServerError(f"{self.name} not healthy after {timeout:.0f}s; see {self.log_file}")

    def _holds_port(self) -> bool:
        """Whether the health answer came from this server, not another process on its port.

        A server that lost its port to another (in a race between choosing the port and binding
        it) exits, but another server of ours may answer the health check meanwhile: without
        this check the caller would talk to the wrong server. A process that serves no port
        (port 0) is judged by its own health check alone; without /proc nothing is checked.
        """
        if self.port == 0:
            return True
        pid = self.pid()
        return pid is not None and _session_listens_on(pid, self.port) is not False

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop gracefully (SIGTERM), then forcefully; return True when something was stopped."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Die like a crashed process would: no shutdown hooks."""
        self._signal(signal.SIGKILL, 0.0)

    def _signal(self, first: signal.Signals, grace_s: float) -> bool:
        """Send ``first`` to the process group, SIGKILL after ``grace_s``, wait until it is gone."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait_s in ((first, grace_s), (signal.SIGKILL, float("inf"))):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _pid_alive(pid):
                break
        if self._child is not None:  # reap our own child so it is not reported as leaked
            with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                self._child.wait(timeout=5)
            self._child = None
        self.pid_file.unlink(missing_ok=True)
        return True


# --------------------------------------------------------------------------------------- Kafka


def _pom_digest() -> str:
    return hashlib.sha256((KAFKA_INFRA / "pom.xml").read_bytes()).hexdigest()[:16]


def ensure_kafka_jars() -> Path:
    """Resolve the broker and its runtime dependencies with Maven, once per pom.xml content."""
    stamp = KAFKA_LIBS / ".pom-digest"
    if stamp.exists() and stamp.read_text() == _pom_digest():
        return KAFKA_LIBS
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise ServerError("Kafka needs `java` (17+) and `mvn` on PATH")
    if KAFKA_LIBS.exists():
        shutil.rmtree(KAFKA_LIBS)
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(KAFKA_INFRA / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={KAFKA_LIBS}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServerError(f"maven could not resolve Kafka:\n{result.stdout}\n{result.stderr}")
    stamp.write_text(_pom_digest())
    return KAFKA_LIBS


@dataclass
class KafkaServer(ManagedProcess):
    """A single-node KRaft broker+controller, started as bin/kafka-server-start.sh would."""

    controller_port: int = 0
    heap: str = "512m"
    extra_config: Mapping[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    def _classpath(self) -> str:
        return f"{KAFKA_LIBS}/*"

    def _java(self) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            # The official kafka-run-class.sh defaults.
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_INFRA / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
        ]

    def prepare(self) -> None:
        ensure_kafka_jars()
        if not self.controller_port:
            raise ServerError("kafka: controller_port must be set")
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created by the project with explicit settings, never implicitly.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
            **self.extra_config,
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # kafka-storage.sh format: the log directory must be formatted once before start.
            result = subprocess.run(
                [
                    *self._java(),
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    "-t",
                    _kafka_cluster_id(),
                    "-c",
                    str(self.config_file),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise ServerError(f"kafka storage format failed:\n{result.stdout}{result.stderr}")

    def command(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.config_file)]

    def healthy(self) -> bool:
        if not port_open(self.port):
            return False
        # The listener opens before the broker has registered with the controller; ask for
        # metadata, which only a broker that is ready can answer with itself in it.
        return _kafka_metadata_ok(self.bootstrap)


def _kafka_cluster_id() -> str:
    """A new Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's own ``Uuid.randomUuid``, never one starting with "-": the storage tool's
    argument parser would take it for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _kafka_metadata_ok(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        except Exception:
            return False
        finally:
            await client.close()

    # Its own loop in its own thread: callers may be inside a running event loop (async tests).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


# --------------------------------------------------------------------------------------- Redis


def ensure_debian_package(binary: str, package: str) -> str:
    """Find ``binary`` on PATH or install Debian's ``package``: the one place the project
    installs system packages (servers start through here, so a fresh machine needs no step)."""
    if found := shutil.which(binary):
        return found
    if shutil.which("apt-get") is None:
        raise ServerError(f"{binary} is missing and apt-get is not available: install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", package], check=True, env=env)
    if not (found := shutil.which(binary)):
        raise ServerError(f"installed {package} but {binary} is still missing")
    return found


@dataclass
class RedisServer(ManagedProcess):
    persistence: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def prepare(self) -> None:
        ensure_debian_package("redis-server", "redis-server")
        lines = [
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {self.port}",
            f"dir {self.home}",
            "daemonize no",
            "save ''" if not self.persistence else "save 60 1000",
            f"appendonly {'yes' if self.persistence else 'no'}",
            "maxmemory-policy noeviction",
            "loglevel notice",
        ]
        (self.home / "redis.conf").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return ["redis-server", str(self.home / "redis.conf")]

    def healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


# ---------------------------------------------------------------------------------- PostgreSQL


def _postgres_bin_dirs() -> list[Path]:
    """Debian's server binaries, one folder per major version (``/usr/lib/postgresql/15/bin``),
    newest first."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").exists()]
    return sorted(
        found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1, reverse=True
    )


def ensure_postgres() -> Path:
    """The folder of ``initdb``/``postgres``, installing Debian's ``postgresql`` when missing.

    Debian keeps the server binaries off PATH, so the PATH binary that ``ensure_debian_package``
    looks for is postgresql-common's ``pg_ctlcluster`` (the server package depends on it). A
    machine with postgresql-common but no server gets the error below.
    """
    if not (dirs := _postgres_bin_dirs()):
        ensure_debian_package("pg_ctlcluster", "postgresql")
        if not (dirs := _postgres_bin_dirs()):
            raise ServerError("no /usr/lib/postgresql/*/bin/initdb: install Debian's postgresql")
    return dirs[0]


# PostgreSQL refuses to run as root. As root (CI, containers), initdb and postgres run as the
# `postgres` system user that the Debian package creates; otherwise as the current user.
_POSTGRES_USER = "postgres"


@dataclass
class PostgresServer(ManagedProcess):
    """A throwaway PostgreSQL cluster in ``home``: superuser ``streamrec``, trust auth, TCP on
    127.0.0.1 and a Unix socket in ``home/socket``.

    As root, ``home`` and every folder above it must be enterable by the ``postgres`` user
    (mode o+x): pytest's own tmp folder (0700) is not, so the fixture uses a folder of its own.
    """

    # fsync, synchronous commit and full-page writes off: a crash may lose or corrupt data.
    # For tests only.
    fast_unsafe: bool = False
    superuser: str = "streamrec"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "socket"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self) -> list[str]:
        """The prefix that runs a server binary as its owner (root hands over to `postgres`)."""
        if os.geteuid() != 0:
            return []
        # setpriv execs (no forked parent like su/runuser), so the PID we record is postgres.
        return [
            "setpriv",
            f"--reuid={_POSTGRES_USER}",
            f"--regid={_POSTGRES_USER}",
            "--init-groups",
            "--",
        ]

    def _owned_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(path, _POSTGRES_USER, _POSTGRES_USER)

    def prepare(self) -> None:
        bin_dir = ensure_postgres()
        self._owned_dir(self.socket_dir)
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._owned_dir(self.data_dir)
        result = subprocess.run(
            [
                *self._as_owner(),
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",  # present on every machine, unlike the caller's LANG
                *(["--no-sync"] if self.fast_unsafe else []),
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.home,
        )
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed (as root, {self.home} and its parents must be enterable by the "
                f"{_POSTGRES_USER} user):\n{result.stdout}{result.stderr}"
            )

    def command(self) -> list[str]:
        unsafe = ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        settings = [
            "listen_addresses=127.0.0.1",
            f"port={self.port}",
            f"unix_socket_directories={self.socket_dir}",
            *(unsafe if self.fast_unsafe else []),
        ]
        return [
            *self._as_owner(),
            str(ensure_postgres() / "postgres"),
            "-D",
            str(self.data_dir),
            *(arg for setting in settings for arg in ("-c", setting)),
        ]

    def _client(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the client programs (``pg_isready``, ``psql``) against this server."""
        return subprocess.run(
            [
                str(ensure_postgres() / program),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            # Only our arguments choose the server: no PGHOST/PGPASSWORD from the caller.
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )

    def healthy(self) -> bool:
        # pg_isready answers 0 only once the server accepts connections (not while starting).
        # It names an existing database, or every probe logs "database ... does not exist".
        return (
            port_open(self.port)
            and self._client("pg_isready", "-q", "-t", "2", "-d", "postgres").returncode == 0
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` (lowercase letters, digits, _) and return its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        result = self._client("psql", "-X", "-q", "-d", "postgres", "-c", f"CREATE DATABASE {name}")
        if result.returncode != 0:
            raise ServerError(f"CREATE DATABASE {name} failed: {result.stderr.strip()}")
        return self.url(name)

    def stop(self, timeout: float = 30.0) -> bool:
        # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to disconnect;
        # SIGINT ("fast") disconnects them, rolls back and still writes a clean checkpoint.
        return self._signal(signal.SIGINT, timeout)


# ------------------------------------------------------------------------------------ Services


# One BLAS/TF thread per process: a thread pool per request handler collapses throughput, and the
# local stack runs a dozen processes on the machine's cores, where a pool per process only adds
# threads to schedule. Session 19: a 10-epoch fit of ML-100K's first 50,000 events in the
# evaluation's 128-event batches took 26.2 s and 32.6 CPU s with TensorFlow's default pools,
# 24.0 s and 24.2 CPU s with one thread each. Alone on an idle machine the product's 1,024-event
# batches train faster with two (33,109 against 24,327 examples/s, for 20 % more CPU): that is how
# the trainer benchmark runs, and Kubernetes sizes the pools by the trainer's CPU limit.
ONE_THREAD_PER_PROCESS = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}


def one_thread_per_process() -> None:
    """This process too (a benchmark that trains or scores in process), unless the environment
    says otherwise; before NumPy's BLAS or TensorFlow start."""
    for name, value in ONE_THREAD_PER_PROCESS.items():
        os.environ.setdefault(name, value)


@dataclass
class ServiceServer(ManagedProcess):
    """One of the project's FastAPI services under uvicorn (one process, as in a pod)."""

    app_factory: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    health_path: str = "/healthz"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        return {**os.environ, **ONE_THREAD_PER_PROCESS, **self.env}

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            self.app_factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--timeout-graceful-shutdown",
            "10",
        ]

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}{self.health_path}", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False


@dataclass
class ModuleServer(ServiceServer):
    """A project process that is not a web app (``python -m <module> <args>``), such as the
    feature updater, but serves its metrics over HTTP: started, probed and stopped like the
    services."""

    module: str = ""
    args: tuple[str, ...] = ()
    health_path: str = "/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


def stop_all(servers: Sequence[ManagedProcess]) -> None:
    for server in reversed(servers):
        server.stop()
