"""The four services as separate uvicorn processes: started, killed (-9), restarted, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devstack.config import SERVICES
from devstack.procs import SetupError, alive, tail, terminate


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            f"{self.name}.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-access-log",
            "--http",
            "backoffice.server:HttpProtocol",
            "--timeout-graceful-shutdown",
            "5",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and alive(self.proc.pid):
            terminate(self.proc.pid, timeout=15)
            self.proc.wait()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Fleet:
    """One process per service, sharing a Kafka broker and a PostgreSQL server (a database each)."""

    env: dict[str, str]
    ports: dict[str, int]
    logs: Path
    replicas: int = 1
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Replica 1 of a service is keyed by its name, the others `<name>-<n>` (ports from `ports` too)."""
        billing = f"http://127.0.0.1:{self.ports['billing']}"
        for n in range(1, self.replicas + 1):
            for service in SERVICES:
                key = service.name if n == 1 else f"{service.name}-{n}"
                port = self.ports[key]
                env = {
                    **os.environ,
                    **self.env,
                    f"{service.name.upper()}_PORT": str(port),
                    "LEDGER_BILLING_URL": billing,
                    "PYTHONUNBUFFERED": "1",
                }
                self.services[key] = ServiceProcess(service.name, port, env, self.logs / f"{key}.log")

    def url(self, name: str) -> str:
        return self.services[name].url

    def start(self, *, timeout: float = 90.0) -> None:
        for service in self.services.values():
            service.start()
        self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 90.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names or self.services)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                proc = self.services[name].proc
                if proc is not None and proc.poll() is not None:
                    raise SetupError(f"{name} exited with {proc.returncode}:\n{tail(self.services[name].log, 40)}")
                if self.services[name].ready():
                    pending.remove(name)
            time.sleep(0.3)
        if pending:
            details = "\n".join(f"--- {n}:\n{tail(self.services[n].log, 20)}" for n in pending)
            raise SetupError(f"not ready after {timeout:.0f}s: {', '.join(pending)}\n{details}")

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()
