"""Where the local stack lives and which ports it uses, per profile (dev for `make run`, test for `make test`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("BACKOFFICE_RUN_DIR", ROOT / ".run"))
KAFKA_LIBS = RUN_DIR / "kafka" / "libs"
POM = ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J = ROOT / "deploy" / "kafka" / "log4j2.properties"
_SUN_PATH_MAX = 107  # bytes of a Unix socket's path on Linux (sun_path is 108 with its NUL)


def pg_data_dir(state: Path) -> Path:
    """The data directory of the local PostgreSQL of `state`."""
    return state / "pg" / "data"


def pg_socket_dir(state: Path, port: int) -> Path | None:
    """Where the local PostgreSQL of `state` puts its Unix socket (its data directory, which its own user owns), or
    None when that path is too long for a socket (it then listens on TCP only)."""
    directory = pg_data_dir(state).resolve()
    return directory if len(f"{directory}/.s.PGSQL.{port}".encode()) <= _SUN_PATH_MAX else None


def tcp_dsn(port: int, database: str) -> str:
    """A DSN of a database on the local PostgreSQL listening on 127.0.0.1:`port`."""
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def local_dsn(state: Path, port: int, database: str) -> str:
    """A DSN of a database on the local PostgreSQL of `state`, once it runs: through its Unix socket when it has one.

    Services, relays and consumers on the same machine as the database save the loopback TCP stack on every round
    trip (measured on the bench's pipeline: p50 and p99 from the order to its journal entry about a fifth lower). The
    server listens on 127.0.0.1 as well, for tools and for `BACKOFFICE_ADMIN_DATABASE_URL`.
    """
    directory = pg_socket_dir(state, port)
    if directory is None or not (directory / f".s.PGSQL.{port}").exists():  # too long, or a server without one
        return tcp_dsn(port, database)
    return f"postgresql://postgres@/{database}?host={quote(str(directory), safe='/')}&port={port}"


@dataclass(frozen=True)
class Service:
    name: str
    port: int

    @property
    def env_prefix(self) -> str:
        return f"{self.name.upper()}_"

    @property
    def app(self) -> str:
        return f"{self.name}.app:create_app"


SERVICES = (
    Service("orders", 8001),
    Service("support", 8002),
    Service("billing", 8003),
    Service("ledger", 8004),
)


@dataclass(frozen=True)
class Profile:
    name: str
    pg_port: int
    kafka_port: int
    controller_port: int
    fast_durability: bool

    @property
    def state(self) -> Path:
        return RUN_DIR / self.name

    @property
    def bootstrap(self) -> str:
        return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or f"127.0.0.1:{self.kafka_port}"

    @property
    def external_kafka(self) -> bool:
        return bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))

    def admin_dsn(self) -> str:
        return tcp_dsn(self.pg_port, "postgres")

    def database_url(self, service: str) -> str:
        override = os.environ.get(f"{service.upper()}_DATABASE_URL")
        return override or local_dsn(self.state, self.pg_port, service)

    def needs_local_postgres(self) -> bool:
        return any(not os.environ.get(f"{s.name.upper()}_DATABASE_URL") for s in SERVICES)


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


PROFILES = {
    "dev": Profile(
        "dev",
        pg_port=_int_env("BACKOFFICE_PG_PORT", 55432),
        kafka_port=_int_env("BACKOFFICE_KAFKA_PORT", 9092),
        controller_port=_int_env("BACKOFFICE_KAFKA_CONTROLLER_PORT", 9093),
        fast_durability=False,
    ),
    "test": Profile(
        "test",
        pg_port=_int_env("BACKOFFICE_TEST_PG_PORT", 55433),
        kafka_port=_int_env("BACKOFFICE_TEST_KAFKA_PORT", 19092),
        controller_port=_int_env("BACKOFFICE_TEST_KAFKA_CONTROLLER_PORT", 19093),
        fast_durability=True,
    ),
}
