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
from collections.abc import Mapping
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
