"""`make demo` from a clean clone: everything comes up, the loop runs, and Ctrl-C leaves nothing behind.

The clone is of this repository's committed HEAD. It reuses the venv running the tests
(`make -o` marks the install step done, so the shared venv is never reinstalled from the
clone; the demo puts the clone's code first on PYTHONPATH). REDIS_URL and DATABASE_URL
are unset, so the demo starts its embedded Redis and uses its own SQLite file.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTUP_LIMIT_SECONDS = 60  # issue 6: admin, Flower and /metrics answer within 60 s
RUNS_LIMIT_SECONDS = 60  # after that, one success of every controller (the demo kicks each once)
STOP_LIMIT_SECONDS = 30  # honcho: SIGTERM, then SIGKILL after 5 s

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running. Zombies do not count: they have
    exited and only wait to be reaped, which an orphan's new parent (PID 1 here, the
    sandbox's init) does on its own schedule."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the parenthesised command: state, ppid, pgrp, ...
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _processes_under(directory: Path) -> list[str]:
    """Processes whose working directory is inside `directory` (every demo process runs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            if cwd == str(directory) or cwd.startswith(f"{directory}/"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{entry.name}: {command}")
        except OSError:
            continue
    return found


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "controlplane"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    yield target
    shutil.rmtree(target, ignore_errors=True)


def test_make_demo_from_a_clean_clone(clone: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    ports = {
        "DEMO_WEB_PORT": _free_port(),
        "DEMO_FLOWER_PORT": _free_port(),
        "DEMO_REDIS_PORT": _free_port(),
        "WORKER_METRICS_PORT": _free_port(),
    }
    assert not any(_port_open(p) for p in ports.values())
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL")}
    env.pop("DEBUG", None)
    env.pop("FLOWER_BASIC_AUTH", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({k: str(v) for k, v in ports.items()})
    venv = Path(sys.prefix)
    log_path = clone / "demo.log"
    web = f"http://127.0.0.1:{ports['DEMO_WEB_PORT']}"
    flower = f"http://127.0.0.1:{ports['DEMO_FLOWER_PORT']}/"
    with log_path.open("wb") as log:
        demo = subprocess.Popen(
            ["make", "-o", f"{venv}/bin/django-admin", "demo", f"VENV={venv}"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, like a terminal's foreground job
        )
    groups: set[int] = set()
    try:
        started = time.monotonic()
        password_file = clone / "var/demo/flower-password"
        while True:
            auth = f"flower:{password_file.read_text().strip()}" if password_file.exists() else None
            up = {
                "admin": _status(f"{web}/admin/login/") == 200,
                "metrics": _status(f"{web}/metrics") == 200,
                "worker metrics": _status(f"http://127.0.0.1:{ports['WORKER_METRICS_PORT']}/metrics") == 200,
                "flower": auth is not None and _status(flower, auth) == 200,
            }
            if all(up.values()):
                break
            assert demo.poll() is None, f"demo exited early:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() - started < STARTUP_LIMIT_SECONDS, (
                f"not up after {STARTUP_LIMIT_SECONDS}s: {up}\n{log_path.read_text()[-4000:]}"
            )
            time.sleep(1)
        startup_seconds = time.monotonic() - started
        assert _status(flower) == 401  # Flower is never open without the login
        # Flower's password is random, its own (not the admin's), and the embedded Redis wants one.
        admin_password = (clone / "var/demo/admin-password").read_text().strip()
        assert password_file.read_text().strip() != admin_password
        assert _status(flower, f"admin:{admin_password}") == 401
        redis_conf = (clone / "var/demo/redis.conf").read_text()
        assert "requirepass " in redis_conf
        assert "bind 127.0.0.1" in redis_conf
        with socket.create_connection(("127.0.0.1", ports["DEMO_REDIS_PORT"]), timeout=5) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(100).startswith(b"-NOAUTH")

        database = clone / "var/controlplane.sqlite3"
        deadline = time.monotonic() + RUNS_LIMIT_SECONDS
        while True:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20) as db:
                names = {r[0] for r in db.execute("SELECT name FROM reconcilers_reconcilerconfig")}
                succeeded = {
                    r[0]
                    for r in db.execute(
                        "SELECT DISTINCT controller FROM reconcilers_reconcilerun WHERE outcome = 'success'"
                    )
                }
                sim_agents = db.execute(
                    "SELECT COUNT(*) FROM agents_agent WHERE name LIKE 'sim-agent-%'"
                ).fetchone()[0]
            if names and names <= succeeded and sim_agents > 0:
                break
            assert time.monotonic() < deadline, (
                f"after {RUNS_LIMIT_SECONDS}s: controllers {sorted(names)}, succeeded {sorted(succeeded)}, "
                f"simulator agents {sim_agents}\n{log_path.read_text()[-4000:]}"
            )
            time.sleep(1)
        assert len(names) >= 4
        runs_seconds = time.monotonic() - started
        print(f"demo up in {startup_seconds:.1f}s; every controller succeeded by {runs_seconds:.1f}s")
    finally:
        text = log_path.read_text(errors="replace")
        groups = {int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", text)}
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        with contextlib.suppress(subprocess.TimeoutExpired):
            demo.wait(timeout=STOP_LIMIT_SECONDS)
        # What must be gone: every process honcho started (each leads its own group, which
        # holds its children: celery's pool, the simulator), and anything still running in
        # the clone. Kill leftovers so a failure never leaks processes into other tests.
        leftovers = [pgid for pgid in groups if _group_alive(pgid)]
        strays = _processes_under(clone)
        for pgid in [*leftovers, demo.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    assert len(groups) >= 6, text[-4000:]  # redis, web, worker, beat, flower, simulator
    assert "redis.1 started" in text
    assert demo.returncode is not None
    assert not leftovers, f"process groups still alive after stop: {leftovers}"
    assert not strays, f"processes left in the clone: {strays}"
    assert not [p for p in ports.values() if _port_open(p)]
