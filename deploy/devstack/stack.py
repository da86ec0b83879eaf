"""Bring the infrastructure of a profile up and down: PostgreSQL, Kafka, databases, topics, migrations."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from backoffice.db import migrate_dsn, service_migrations
from backoffice.topics import ensure_topics
from devstack import kafka, postgres
from devstack.config import SERVICES, Profile


@dataclass
class Infra:
    profile: Profile
    pg: postgres.PostgresServer | None = None
    broker: kafka.KafkaBroker | None = None
    started: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, profile: Profile) -> Infra:
        infra = cls(profile)
        if profile.needs_local_postgres():
            infra.pg = postgres.PostgresServer(
                profile.state, port=profile.pg_port, fast_durability=profile.fast_durability
            )
        if not profile.external_kafka:
            infra.broker = kafka.KafkaBroker(
                profile.state, port=profile.kafka_port, controller_port=profile.controller_port
            )
        return infra

    def env(self) -> dict[str, str]:
        """The environment a service or a test needs to reach this stack."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.profile.bootstrap,
            "BACKOFFICE_ADMIN_DATABASE_URL": self.profile.admin_dsn(),
        }
        for service in SERVICES:
            env[f"{service.name.upper()}_DATABASE_URL"] = self.profile.database_url(service.name)
        return env

    def up(self, *, fresh: bool = False) -> None:
        """Start what is not running, wait until it answers, then databases, topics and migrations."""
        t0 = time.monotonic()
        if self.broker is not None:
            kafka.ensure_jars()
        if fresh and self.running() == "none":
            _wipe(self.profile.state)
        if self.pg is not None and not self.pg.pid():
            self.pg.start()
            self.started.append("postgres")
        if self.broker is not None and not self.broker.pid():
            self.broker.start()
            self.started.append("kafka")
        asyncio.run(self._prepare())
        self.timings["infra_ready_s"] = time.monotonic() - t0

    async def _prepare(self) -> None:
        if self.pg is not None:
            await postgres.wait_ready(self.profile.admin_dsn())
            for service in SERVICES:
                if not os.environ.get(f"{service.name.upper()}_DATABASE_URL"):
                    await postgres.ensure_database(self.profile.admin_dsn(), service.name)
        self.timings["kafka_ready_s"] = await kafka.wait_ready(self.profile.bootstrap, broker=self.broker)
        await ensure_topics(self.profile.bootstrap, partitions=int(os.environ.get("BACKOFFICE_TOPIC_PARTITIONS", 6)))
        for service in SERVICES:
            module = importlib.import_module(service.name)
            directory = Path(module.__file__ or "").parent / "migrations"
            await migrate_dsn(
                self.profile.database_url(service.name), service_migrations(directory, service=service.name)
            )

    def running(self) -> str:
        parts = [
            self.pg is not None and self.pg.pid() is not None,
            self.broker is not None and self.broker.pid() is not None,
        ]
        return "all" if all(parts) else ("some" if any(parts) else "none")

    def down(self, *, only_started: bool = False) -> None:
        if self.broker is not None and (not only_started or "kafka" in self.started):
            self.broker.stop()
        if self.pg is not None and (not only_started or "postgres" in self.started):
            self.pg.stop()


def _wipe(state: Path) -> None:
    import shutil

    for part in ("pg", "kafka"):
        shutil.rmtree(state / part, ignore_errors=True)
