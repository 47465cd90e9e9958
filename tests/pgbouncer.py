"""A real PgBouncer for the tests: Debian's package, transaction pooling, as a busy pool behaves.

`server_reset_query_always = 1` runs `DISCARD ALL` after every transaction, so anything a
session kept across a commit (a server-side or WITH HOLD cursor, a prepared statement, a
SET) is gone by the next one, even when the pool hands the client the same server
connection again. The pooler forwards every database name to the test run's own
PostgreSQL server; the tests create and drop their databases there directly, never
through the pooler.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PGBOUNCER = "/usr/sbin/pgbouncer"  # Debian's package (.ci/install-system-packages installs it)
RUN_AS = "postgres"  # pgbouncer refuses to run as root
START_TIMEOUT_SECONDS = 15
POOL_SIZE = 20  # server connections per (database, user): fewer than the e2e stack's clients

CONFIG = """\
[databases]
* = host={pg_host} port={pg_port} user={pg_user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
server_reset_query = DISCARD ALL
server_reset_query_always = 1
default_pool_size = {pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""


@dataclass
class PgBouncer:
    host: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, chars: int = 3000) -> str:
        log = self.folder / "pgbouncer.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self) -> None:
        """Stop this pgbouncer (by its pid): its server connections close with it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pgbouncer_start(*, pg_host: str, pg_port: int, pg_user: str, port: int = 0) -> PgBouncer:
    """Start pgbouncer in front of the PostgreSQL server at pg_host:pg_port; wait until it accepts.

    `port` 0 picks a free loopback port. Raises RuntimeError (with the log) when it does not start.
    """
    if not Path(PGBOUNCER).exists():
        raise RuntimeError(
            f"{PGBOUNCER} is missing: install Debian's pgbouncer (.ci/install-system-packages)"
        )
    port = port or free_port()
    folder = Path(tempfile.mkdtemp(prefix="cp-pgbouncer-"))
    (folder / "pgbouncer.ini").write_text(
        CONFIG.format(
            pg_host=pg_host, pg_port=pg_port, pg_user=pg_user, port=port, folder=folder, pool_size=POOL_SIZE
        )
    )
    argv = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(folder, user=RUN_AS)
        argv = ["runuser", "-u", RUN_AS, "--", *argv]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bouncer = PgBouncer("127.0.0.1", port, folder, process)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return bouncer
        except OSError:
            time.sleep(0.1)
    log = bouncer.log_tail()
    bouncer.stop()
    raise RuntimeError(f"pgbouncer did not start on 127.0.0.1:{port}:\n{log}")
