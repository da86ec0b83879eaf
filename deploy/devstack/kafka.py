"""A real single-node Apache Kafka broker in KRaft mode, from the jars Maven resolves from Maven Central."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devstack.config import KAFKA_LIBS, LOG4J, POM
from devstack.procs import SetupError, port_free, read_pid, spawn, tail, terminate

logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def ensure_jars() -> Path:
    """Resolve the broker's jars with Maven once; later calls reuse them."""
    stamp = KAFKA_LIBS / ".resolved"
    if stamp.exists() and stamp.read_text() == POM.read_text():
        return KAFKA_LIBS
    if not shutil.which("java"):
        raise SetupError(
            "Java is not installed. Install a JDK 17 or newer (Debian: apt-get install openjdk-17-jdk-headless)."
        )
    if not shutil.which("mvn"):
        raise SetupError(
            "Maven is not installed. Install it (Debian: apt-get install maven); it fetches the Kafka jars."
        )
    KAFKA_LIBS.mkdir(parents=True, exist_ok=True)
    for old in KAFKA_LIBS.glob("*.jar"):
        old.unlink()
    print("fetching the Apache Kafka jars with Maven (once)...", flush=True)
    result = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={KAFKA_LIBS}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SetupError(f"Maven could not resolve the Kafka jars:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    stamp.write_text(POM.read_text())
    return KAFKA_LIBS


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes them (base64url of 16 bytes), never starting with "-": the storage tool
    would read such an id as an option and refuse to format (one id in 64 did, before)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker:
    """A broker with its own data directory and ports; `start` is idempotent, `kill` is a crash."""

    def __init__(self, state: Path, *, port: int, controller_port: int, partitions: int = 6) -> None:
        self.dir = state / "kafka"
        self.data = self.dir / "data"
        self.logs = self.dir / "logs"
        self.config = self.dir / "server.properties"
        self.pidfile = self.dir / "broker.pid"
        self.stdout = self.logs / "stdout.log"
        self.port = port
        self.controller_port = controller_port
        self.partitions = partitions

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def _write_config(self) -> None:
        self.config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.data}",
                    f"num.partitions={self.partitions}",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "delete.topic.enable=true",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            # C1 only: this broker lives for a test run or a dev session; C2 kept compiling for minutes after each
            # start (0.2-0.3 of a core measured at 30 orders/s), more than its faster code saved (about 0.08). The
            # bench's broker is no exception: in its pipeline at 430-480 orders/s (2026-12-01), C2 took 0.27-0.34 of
            # a core after a 30 s warm-up and still 0.15-0.20 after 4 minutes of load, against 0.13-0.15 with C1.
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            f"-Dkafka.logs.dir={self.logs}",
            "-cp",
            f"{ensure_jars()}/*",
            main,
            *args,
        ]

    def _format(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        result = subprocess.run(
            self._java(
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config), "--ignore-formatted"
            ),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SetupError(f"Formatting the Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        if self.pid():
            return
        for port in (self.port, self.controller_port):
            if not port_free(port):
                raise SetupError(
                    f"Kafka port {port} is already taken by another program. Stop it, or choose other ports with "
                    "BACKOFFICE_KAFKA_PORT / BACKOFFICE_KAFKA_CONTROLLER_PORT (BACKOFFICE_TEST_KAFKA_* for tests)."
                )
        self.logs.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format()
        env = {**os.environ, "KAFKA_LOG4J_OPTS": ""}
        proc = spawn(self._java("kafka.Kafka", str(self.config)), log=self.stdout, pidfile=self.pidfile, env=env)
        time.sleep(0.5)
        if proc.poll() is not None:
            raise SetupError(f"The Kafka broker exited at once. The end of its log:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return tail(self.stdout) + "\n" + tail(self.logs / "broker.log")

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            terminate(pid, timeout=30)

    def kill(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, 9)
            terminate(pid, timeout=5)


async def wait_ready(bootstrap: str, *, timeout: float = 90.0, broker: KafkaBroker | None = None) -> float:
    """Wait until the broker answers metadata requests and can coordinate consumer groups; return the seconds it
    took. A fresh broker answers metadata first and creates its offsets topic on the first request for a group's
    coordinator; services started before that each logged GroupCoordinatorNotAvailableError at error level."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if broker is not None and broker.pid() is None:
            raise SetupError(f"The Kafka broker died while starting. The end of its log:\n{broker.log_tail()}")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.describe_cluster()
            await admin.find_coordinator("devstack-ready")
            return time.monotonic() - started
        except (TimeoutError, KafkaError, OSError):
            await asyncio.sleep(0.3)
        finally:
            await admin.close()
    tail_text = broker.log_tail() if broker else ""
    raise SetupError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s.\n{tail_text}")
