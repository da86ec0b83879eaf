"""The operator's command line: `backoffice token ...`, `topics`, `migrate`, `dlq`, `lag`, `docs`, `demo`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from backoffice.auth import issue_token
from backoffice.settings import DEV_JWT_SECRET


def _token(args: argparse.Namespace) -> int:
    secret = os.environ.get("BACKOFFICE_JWT_SECRET", DEV_JWT_SECRET)
    print(issue_token(secret, scopes=args.scope, sub=args.sub, customer_id=args.customer_id, ttl=args.ttl))
    return 0


def _topics(args: argparse.Namespace) -> int:
    from backoffice.topics import ensure_topics

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = os.environ.get("BACKOFFICE_TOPIC_PREFIX", "")
    created = asyncio.run(ensure_topics(bootstrap, prefix=prefix, partitions=args.partitions))
    print("created: " + (", ".join(created) or "nothing, all exist"))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from backoffice.db import migrate_dsn, service_migrations

    module = __import__(args.service)
    directory = Path(module.__file__ or ".").parent / "migrations"
    dsn = os.environ.get(f"{args.service.upper()}_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not dsn:
        print(f"set {args.service.upper()}_DATABASE_URL or DATABASE_URL", file=sys.stderr)
        return 2
    applied = asyncio.run(migrate_dsn(dsn, service_migrations(directory, service=args.service)))
    print("applied: " + (", ".join(applied) or "nothing, up to date"))
    return 0


def _bootstrap() -> tuple[str, str]:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), os.environ.get("BACKOFFICE_TOPIC_PREFIX", "")


def _dlq(args: argparse.Namespace) -> int:
    from backoffice import ops

    bootstrap, prefix = _bootstrap()
    group = args.group if args.group.startswith(prefix) else prefix + args.group
    if args.action == "list":
        letters = asyncio.run(ops.read_dead_letters(bootstrap, group))
        for d in letters:
            i = d.info
            print(
                f"{d.partition}:{d.offset}  {i.get('ce_type', '?')}  ce_id={i.get('ce_id', '?')}  "
                f"from {i.get('dlq_topic')}[{i.get('dlq_partition')}]@{i.get('dlq_offset')}  {i.get('dlq_reason')}"
            )
        print(f"{len(letters)} dead letter(s) on {group}.dlq")
        return 0
    replayed = asyncio.run(ops.replay_dead_letters(bootstrap, group, ids=set(args.id or ())))
    print(f"replayed {len(replayed)} dead letter(s) to their original topics (same ce_id: applied at most once)")
    return 0


def _lag(args: argparse.Namespace) -> int:
    from backoffice import ops
    from backoffice.topics import SERVICES

    bootstrap, prefix = _bootstrap()
    for row in asyncio.run(ops.group_lag(bootstrap, prefix=prefix)):
        print(f"group {row.group:<12} lag {row.lag:>8}  ({row.partitions} partitions)")
    for service in SERVICES:
        dsn = os.environ.get(f"{service.upper()}_DATABASE_URL")
        if dsn:
            b = asyncio.run(ops.outbox_backlog(service, dsn))
            print(f"outbox {service:<11} unsent {b.unsent:>7}  oldest {b.oldest_unsent_s:.1f}s")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from backoffice import apidocs

    directory = Path(args.out)
    breaks = apidocs.event_breaks(directory)
    if breaks:
        print("breaking event changes (publish a new version instead):\n  " + "\n  ".join(breaks), file=sys.stderr)
        return 1
    if args.check:
        stale = apidocs.stale(directory)
        if stale:
            print("docs differ from the code; run `make docs` and commit:\n  " + "\n  ".join(stale), file=sys.stderr)
            return 1
        print("docs match the code")
        return 0
    written = apidocs.write(directory)
    print("wrote: " + (", ".join(written) or "nothing, up to date"))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from backoffice.demo import DemoError, Urls, run_demo
    from backoffice.demo_report import render

    urls = Urls(orders=args.orders_url, billing=args.billing_url, support=args.support_url, ledger=args.ledger_url)
    try:
        summary = asyncio.run(run_demo(urls, customers=args.customers, seed=args.seed, timeout=args.timeout))
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    render(summary)
    if not (summary.balanced and summary.reconciliation_clean):
        print("demo finished, but the books do not agree (see above)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backoffice", description="Back-office platform operations.")
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="print a development JWT (HS256, BACKOFFICE_JWT_SECRET)")
    token.add_argument("--scope", required=True, help='space-separated scopes, e.g. "orders:read orders:write"')
    token.add_argument("--customer-id", default=None, help="make it a customer token for this customer")
    token.add_argument("--sub", default=None, help="the subject (default: a new dev id)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.set_defaults(func=_token)
    topics = sub.add_parser("topics", help="create the platform's topics (KAFKA_BOOTSTRAP_SERVERS)")
    topics.add_argument("--partitions", type=int, default=6)
    topics.set_defaults(func=_topics)
    migrate = sub.add_parser("migrate", help="apply a service's migrations (<SERVICE>_DATABASE_URL)")
    migrate.add_argument("service", choices=["orders", "billing", "support", "ledger"])
    migrate.set_defaults(func=_migrate)
    dlq = sub.add_parser("dlq", help="inspect or replay a consumer group's dead letters")
    dlq.add_argument("action", choices=["list", "replay"])
    dlq.add_argument("group", help="the consumer group: orders, billing, support or ledger")
    dlq.add_argument("--id", action="append", help="replay only this ce_id (repeatable)")
    dlq.set_defaults(func=_dlq)
    lag = sub.add_parser("lag", help="each consumer group's lag and each outbox's oldest unsent age")
    lag.set_defaults(func=_lag)
    docs = sub.add_parser("docs", help="write OpenAPI and AsyncAPI documents and event schemas from the code")
    docs.add_argument("--out", default="docs")
    docs.add_argument("--check", action="store_true", help="fail when the committed docs differ from the code")
    docs.set_defaults(func=_docs)
    demo = sub.add_parser("demo", help="seed a catalogue and run a business day through the APIs, then sum it up")
    for service, port in (("orders", 8001), ("support", 8002), ("billing", 8003), ("ledger", 8004)):
        demo.add_argument(f"--{service}-url", default=f"http://127.0.0.1:{port}", help=f"the {service} service")
    demo.add_argument("--customers", type=int, default=5, help="how many customers (at least 3; default 5)")
    demo.add_argument("--seed", type=int, default=None, help="seed the day's choices (ids are fresh every run)")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for events at each wait")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
