"""Real processes for the fault and load suite: a private redis-server, Celery workers and
beats, `manage.py` commands, each started in its own process group and stopped by pid.

Every process logs to a file in the scenario's folder, so a failed invariant can be traced
to what the workers said. `ProcessSet.stop_all()` runs in a `finally` of every scenario:
SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_SECONDS = 15.0  # a warm Celery shutdown waits for the task in progress
REDIS_START_SECONDS = 10.0


@dataclass
class Proc:
    """One started process (the leader of its own process group)."""

    label: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM the group, wait, then SIGKILL it; returns the leader's exit code."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # Children of the leader (prefork pool processes) may outlive it: kill the group.
        self.signal_group(signal.SIGKILL)
        try:
            return self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return None


@dataclass
class ProcessSet:
    """The processes of one scenario; `stop_all` stops them in reverse start order."""

    log_dir: Path
    env: Mapping[str, str]
    procs: list[Proc] = field(default_factory=list)

    def start(self, label: str, argv: list[str], **extra_env: str) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{label}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env={**self.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log_file.close()
        proc = Proc(label=label, popen=popen, log_path=log_path)
        self.procs.append(proc)
        return proc

    def manage(self, label: str, *args: str, **extra_env: str) -> Proc:
        return self.start(label, [sys.executable, "manage.py", *args], **extra_env)

    def celery_worker(self, label: str, *, concurrency: int, queue: str, **extra_env: str) -> Proc:
        return self.start(
            label,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane",
                "worker",
                "--pool=prefork",
                f"--concurrency={concurrency}",
                "-Q",
                queue,
                "-n",
                f"{label}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            **extra_env,
        )

    def celery_beat(self, label: str, **extra_env: str) -> Proc:
        # Each beat has its own pid file and schedule file: two independent schedulers.
        return self.start(
            label,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane",
                "beat",
                "--scheduler=django_celery_beat.schedulers:DatabaseScheduler",
                f"--pidfile={self.log_dir / (label + '.pid')}",
                f"--schedule={self.log_dir / (label + '.schedule')}",
                "--loglevel=INFO",
            ],
            **extra_env,
        )

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for proc in reversed(self.procs):
            codes[proc.label] = proc.stop()
        return codes


class RedisServer:
    """A private redis-server on a loopback port, no persistence, stopped and restarted by pid."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.log_dir = log_dir
        self.popen: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"redis-{self.port}.log", "ab") as log_file:
            self.popen = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + REDIS_START_SECONDS
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.popen = None


SENTINEL_QUORUM = 2
SENTINEL_DOWN_AFTER_MS = 1000  # a dead master is noticed within a second
SENTINEL_FAILOVER_TIMEOUT_MS = 5000
SENTINEL_READY_SECONDS = 30.0


class SentinelCluster:
    """A real Sentinel topology on loopback: a master, one replica and three sentinels
    (`redis-server --sentinel` with a config file each, since sentinels rewrite it), on
    `ports[0]` (master), `ports[1]` (replica) and `ports[2:5]` (sentinels); no persistence.

    `url(db)` is the kombu form every client takes with REDIS_SENTINEL_MASTER=`master_name`.
    """

    def __init__(self, ports: range | list[int], log_dir: Path, master_name: str = "cpmaster") -> None:
        if len(ports) < 5:
            raise ValueError("a Sentinel cluster needs 5 ports: master, replica, 3 sentinels")
        self.data_ports = [ports[0], ports[1]]
        self.sentinel_ports = [ports[2], ports[3], ports[4]]
        self.log_dir = log_dir
        self.master_name = master_name
        self.popens: list[subprocess.Popen[bytes]] = []

    def url(self, db: int = 0) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def _spawn(self, label: str, argv: list[str]) -> None:
        with open(self.log_dir / f"{label}.log", "ab") as log_file:
            self.popens.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for role, port in zip(("master", "replica"), self.data_ports, strict=True):
                argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
                argv += ["--save", "", "--appendonly", "no", "--dir", str(self.log_dir)]
                argv += ["--dbfilename", f"dump-{port}.rdb"]
                if role == "replica":
                    argv += ["--replicaof", "127.0.0.1", str(self.data_ports[0])]
                self._spawn(f"redis-{role}-{port}", argv)
            for port in self.sentinel_ports:
                config = self.log_dir / f"sentinel-{port}.conf"
                config.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self.log_dir}\n"
                    f"sentinel monitor {self.master_name} 127.0.0.1 {self.data_ports[0]} {SENTINEL_QUORUM}\n"
                    f"sentinel down-after-milliseconds {self.master_name} {SENTINEL_DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {self.master_name} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
                    f"sentinel parallel-syncs {self.master_name} 1\n"
                )
                self._spawn(f"sentinel-{port}", ["redis-server", str(config), "--sentinel"])
            if not self._wait(self._ready, SENTINEL_READY_SECONDS):
                raise RuntimeError(f"the Sentinel cluster did not become ready (logs in {self.log_dir})")
        except BaseException:
            self.stop()
            raise

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)

    def master_addresses(self) -> list[tuple[str, int] | None]:
        """Each sentinel's answer to `SENTINEL GET-MASTER-ADDR-BY-NAME` (None: no answer)."""
        answers: list[tuple[str, int] | None] = []
        for port in self.sentinel_ports:
            try:
                reply = self.sentinel(port).execute_command(
                    "SENTINEL GET-MASTER-ADDR-BY-NAME", self.master_name
                )
                host, master_port = reply
                answers.append((str(host), int(master_port)))
            except (redis.RedisError, TypeError, ValueError):
                answers.append(None)
        return answers

    def role(self, port: int) -> str:
        try:
            return str(redis.Redis(port=port, socket_timeout=1).role()[0], "ascii")
        except redis.RedisError:
            return "down"

    def _ready(self) -> bool:
        """Every sentinel agrees on the master, knows the replica (linked) and both other
        sentinels: only then can a failover elect a leader and promote the replica."""
        master = ("127.0.0.1", self.data_ports[0])
        if self.master_addresses() != [master] * len(self.sentinel_ports):
            return False
        try:
            for port in self.sentinel_ports:
                client = self.sentinel(port)
                replicas = client.execute_command("SENTINEL SLAVES", self.master_name)
                linked = [r for r in replicas if r["master-link-status"] == "ok"]
                if [int(r["port"]) for r in linked] != [self.data_ports[1]]:
                    return False
                peers = client.execute_command("SENTINEL SENTINELS", self.master_name)
                if len(peers) < len(self.sentinel_ports) - 1:
                    return False
        except redis.RedisError:
            return False
        return True

    def failover(self) -> tuple[int, int]:
        """`SENTINEL FAILOVER` on the first sentinel; returns (old master port, new master port)
        once every sentinel reports the new master and it answers ROLE as master."""
        old = self.master_addresses()[0]
        assert old is not None
        self.sentinel(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", self.master_name)
        new_port = next(p for p in self.data_ports if p != old[1])
        expected = [("127.0.0.1", new_port)] * len(self.sentinel_ports)
        switched = self._wait(
            lambda: self.master_addresses() == expected and self.role(new_port) == "master", 30
        )
        if not switched:
            raise RuntimeError(f"failover did not complete: sentinels say {self.master_addresses()}")
        return old[1], new_port

    @staticmethod
    def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        for popen in reversed(self.popens):
            if popen.poll() is None:
                popen.terminate()
        for popen in self.popens:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
        self.popens = []
