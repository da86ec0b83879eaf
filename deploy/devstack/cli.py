"""`devstack up|down|env|run|test`: the local stack behind `make run`, `make test`, `make infra-up`."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from backoffice.auth import issue_token
from backoffice.settings import DEV_JWT_SECRET
from devstack.config import PROFILES, ROOT, SERVICES, Profile
from devstack.procs import SetupError, port_free, terminate
from devstack.stack import Infra

COLORS = {"orders": "\033[36m", "support": "\033[35m", "billing": "\033[33m", "ledger": "\033[32m"}


def _up(profile: Profile, *, fresh: bool = False) -> Infra:
    infra = Infra.of(profile)
    infra.up(fresh=fresh)
    return infra


def cmd_up(args: argparse.Namespace) -> int:
    infra = _up(PROFILES[args.profile])
    print(
        f"infrastructure ({args.profile}) is up in {infra.timings['infra_ready_s']:.1f}s; "
        f"Kafka answered after {infra.timings['kafka_ready_s']:.1f}s"
    )
    for key, value in infra.env().items():
        print(f"  {key}={value}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    Infra.of(PROFILES[args.profile]).down()
    print(f"infrastructure ({args.profile}) is stopped")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    for key, value in Infra.of(PROFILES[args.profile]).env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def service_env(infra: Infra, *, service: str, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **infra.env(), f"{service.upper()}_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    env.setdefault("BILLING_URL", "http://127.0.0.1:8003")
    return {**env, **(extra or {})}


def service_command(service: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"{service}.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--http",
        "backoffice.server:HttpProtocol",
        "--timeout-graceful-shutdown",
        "10",
    ]


def _stream(name: str, stream: object) -> None:
    color = COLORS.get(name.split("-")[0], "")
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        sys.stdout.write(f"{color}{name:>8} |\033[0m {raw.decode(errors='replace')}")
        sys.stdout.flush()


def instances(replicas: int) -> list[tuple[str, str, int]]:
    """(label, service, port) of every process `make run` starts: replica n listens on the base port + 100 (n - 1)."""
    out = []
    for n in range(1, replicas + 1):
        for service in SERVICES:
            base = int(os.environ.get(f"{service.name.upper()}_PORT", service.port))
            label = service.name if n == 1 else f"{service.name}-{n}"
            out.append((label, service.name, base + 100 * (n - 1)))
    return out


def cmd_run(args: argparse.Namespace) -> int:
    profile = PROFILES["dev"]
    for label, _, port in instances(args.replicas):
        if not port_free(port):
            raise SetupError(f"port {port} for {label} is already taken; stop what uses it or set <SERVICE>_PORT")
    infra = _up(profile)
    print(f"PostgreSQL and Kafka are up ({infra.timings['infra_ready_s']:.1f}s)", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        for label, service_name, port in instances(args.replicas):
            proc = subprocess.Popen(
                service_command(service_name, port),
                env=service_env(infra, service=service_name, port=port),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(proc)
            threading.Thread(target=_stream, args=(label, proc.stdout), daemon=True).start()
        secret = os.environ.get("BACKOFFICE_JWT_SECRET", DEV_JWT_SECRET)
        token = issue_token(
            secret,
            sub="dev:admin",
            ttl=12 * 3600,
            scopes=" ".join(
                f"{s}:{a}" for s in ("orders", "support", "billing", "ledger") for a in ("read", "write", "admin")
            )
            + " inventory:write",
        )
        print("\nservices:")
        for label, _, port in instances(args.replicas):
            print(f"  {label:<10} http://127.0.0.1:{port}  (docs: http://127.0.0.1:{port}/docs)")
        print(f"\ndevelopment token (all scopes, 12 h):\n  {token}\n\nCtrl-C stops everything.\n", flush=True)
        while not stopping:
            time.sleep(0.5)
            if any(p.poll() is not None for p in procs):
                print("a service exited; stopping everything", flush=True)
                break
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping services...", flush=True)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            terminate(proc.pid, timeout=15)
        print("stopping PostgreSQL and Kafka...", flush=True)
        if not args.keep_infra:
            infra.down(only_started=True)
        print("stopped.", flush=True)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    profile = PROFILES["test"]
    t0 = time.monotonic()
    infra = Infra.of(profile)
    infra.up(fresh=True)
    print(
        f"test infrastructure up in {infra.timings['infra_ready_s']:.1f}s "
        f"(Kafka answered after {infra.timings['kafka_ready_s']:.1f}s); "
        f"{time.monotonic() - t0:.1f}s to the first test",
        flush=True,
    )
    env = {**os.environ, **infra.env()}
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", *args.pytest_args], cwd=ROOT, env=env)
    finally:
        infra.down(only_started=True)
    if result.returncode == 5:
        print("pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return result.returncode


def cmd_chaos(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from dataclasses import asdict

    from devstack import chaos

    kafka_jars()
    report = asyncio.run(
        chaos.run(orders=args.orders, seed=args.seed, kill_postgres=not args.no_postgres, min_kills=args.min_kills)
    )
    summary = {k: v for k, v in asdict(report).items() if k != "schedule"}
    print(f"seed {report.seed}; schedule:\n  " + "\n  ".join(report.schedule))
    print(json.dumps(summary, indent=2))
    print("chaos: all invariants hold" if report.ok else "chaos: INVARIANTS FAILED", flush=True)
    return 0 if report.ok else 1


def kafka_jars() -> None:
    from devstack.kafka import ensure_jars

    ensure_jars()


def cmd_validate(args: argparse.Namespace) -> int:
    from devstack.validate import validate

    return 0 if validate() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description="Local PostgreSQL + Kafka + services.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("up", cmd_up), ("down", cmd_down), ("env", cmd_env)):
        p = sub.add_parser(name)
        p.add_argument("--profile", choices=sorted(PROFILES), default="dev")
        p.set_defaults(func=func)
    run = sub.add_parser("run", help="infrastructure and the four services in the foreground")
    run.add_argument("--keep-infra", action="store_true")
    run.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("REPLICAS", "1") or 1),
        help="instances of each service, sharing consumer groups and outboxes",
    )
    run.set_defaults(func=cmd_run)
    test = sub.add_parser("test", help="test infrastructure, pytest, then stop what was started")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    test.set_defaults(func=cmd_test)
    chaos = sub.add_parser("chaos", help="order-to-cash load while killing processes; checks every invariant")
    chaos.add_argument("--orders", type=int, default=2000)
    chaos.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    chaos.add_argument("--min-kills", type=int, default=5, help="kills per component, at least")
    chaos.add_argument("--no-postgres", action="store_true", help="do not kill PostgreSQL")
    chaos.set_defaults(func=cmd_chaos)
    sub.add_parser("validate", help="validate Dockerfiles, compose and Kubernetes manifests offline").set_defaults(
        func=cmd_validate
    )
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SetupError as exc:
        print(f"\nset-up problem: {exc}\n", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
