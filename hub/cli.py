"""The `hub` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date

from hub.config import ConfigError, Settings, load_settings, uri_password
from hub.logs import Redactor, setup_logging


def _settings(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as error:
        print(f"hub: bad config: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    from hub.server import run_forever
    from hub.store.embedded import EmbeddedStoreError

    settings = _settings(args.config)
    redactor = setup_logging(settings.logging.level, settings.logging.format, settings.secrets)
    try:
        asyncio.run(run_forever(settings))
    except OSError as error:
        print(f"hub: cannot serve: {redactor.text(str(error))}", file=sys.stderr)
        return 1
    except (PyMongoError, EmbeddedStoreError) as error:
        # The store is unreachable at start-up: say so plainly, not with a traceback.
        where = _shown_uri(settings.store.uri) or f"the embedded store in {settings.data_dir}"
        reason = redactor.text(str(error)).split(", Timeout:", 1)[0]
        print(f"hub: cannot serve: store {where}: {reason}", file=sys.stderr)
        return 1
    return 0


def _shown_uri(uri: str) -> str:
    """`uri` fit to print: its password, if any, masked."""
    password = uri_password(uri)
    return uri.replace(f":{password}@", ":***@", 1) if password else uri


async def _check(settings: Settings) -> int:
    from pymongo.errors import PyMongoError

    from hub.store import Store

    redact = Redactor(settings.secrets).text

    try:
        store = await Store.for_settings(settings)
    except Exception as error:
        print(f"hub: store: cannot start or reach it: {redact(str(error))}", file=sys.stderr)
        return 1
    try:
        if not await store.ping():
            where = _shown_uri(settings.store.uri) or f"the embedded store in {settings.data_dir}"
            print(f"hub: store: {where} does not answer", file=sys.stderr)
            return 1
        try:
            await store.ensure_indexes()
        except PyMongoError as error:
            print(
                f"hub: store: answers but cannot create collections and indexes: "
                f"{redact(str(error))}",
                file=sys.stderr,
            )
            return 1
    finally:
        await store.close()
    kind = "MongoDB" if settings.store.uri else f"embedded store in {settings.data_dir}"
    print(f"hub: config {settings.source} is valid; {len(settings.inboxes)} inbox(es)")
    print(f"hub: store answers ({kind}, database {settings.store.database})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    setup_logging("WARNING", settings.logging.format, settings.secrets)
    return asyncio.run(_check(settings))


async def _add_agent(settings: Settings, args: argparse.Namespace, password: str) -> int:
    from hub.services.accounts import AccountError, Accounts
    from hub.store import Store

    store = await Store.for_settings(settings)
    try:
        await store.ensure_indexes()
        agent = await Accounts(store).create_agent(
            email=args.email, name=args.name, role=args.role, password=password
        )
    except AccountError as error:
        print(f"hub: agent not added: {error}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print(f"hub: agent {agent['email']} ({agent['role']}) added with id {agent['_id']}")
    return 0


def cmd_agents_add(args: argparse.Namespace) -> int:
    import getpass
    import os

    from pymongo.errors import PyMongoError

    from hub.store.embedded import EmbeddedStoreError

    settings = _settings(args.config)
    redactor = setup_logging("WARNING", settings.logging.format, settings.secrets)
    if args.password_env:
        password = os.environ.get(args.password_env, "")
        if not password:
            print(f"hub: the environment variable {args.password_env} is empty", file=sys.stderr)
            return 2
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print("hub: the passwords differ", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_add_agent(settings, args, password))
    except (PyMongoError, EmbeddedStoreError) as error:
        print(f"hub: store: {redactor.text(str(error))}", file=sys.stderr)
        return 1


class ProgressBar:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line
    per tenth otherwise (logs and pipes stay readable)."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label = label
        self.width = width
        self.tty = sys.stderr.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if not self.tty:
            tenth = int(share * 10)
            if tenth == self._shown:
                return
            self._shown = tenth
        filled = int(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        end = "" if self.tty and done < total else "\n"
        prefix = "\r" if self.tty else ""
        print(f"{prefix}{self.label} [{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)


async def _import_contacts(settings: Settings, rows: list[tuple[int, dict[str, str]]]) -> int:
    from hub.services.contacts_io import import_rows
    from hub.store import Store

    store = await Store.for_settings(settings)
    try:
        await store.ensure_indexes()
        report = await import_rows(
            store,
            rows,
            default_region=settings.identity.default_region,
            progress=ProgressBar("importing"),
        )
    finally:
        await store.close()
    print(
        f"hub: {report.rows} row(s): {report.created} created, {report.merged} merged, "
        f"{report.rejected} rejected"
    )
    for rejection in report.reasons:
        print(f"  line {rejection.row}: {rejection.reason}")
    if report.rejected > len(report.reasons):
        print(f"  ... and {report.rejected - len(report.reasons)} more")
    return 0


def cmd_contacts_import(args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    from hub.services.contacts_io import read_rows
    from hub.store.embedded import EmbeddedStoreError

    try:
        with open(args.file, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        print(f"hub: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    try:
        _, rows = read_rows(text)
    except ValueError as error:
        print(f"hub: {args.file}: {error}", file=sys.stderr)
        return 2
    settings = _settings(args.config)
    redactor = setup_logging("WARNING", settings.logging.format, settings.secrets)
    try:
        return asyncio.run(_import_contacts(settings, rows))
    except (PyMongoError, EmbeddedStoreError) as error:
        print(f"hub: store: {redactor.text(str(error))}", file=sys.stderr)
        return 1


def cmd_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hub.store.backup import BackupError, backup_embedded

    settings = _settings(args.config)
    if settings.store.uri:
        print(
            f"hub: backup copies the embedded store; the store here is "
            f"{_shown_uri(settings.store.uri)}: use mongodump (docs/operations.md, Backups)",
            file=sys.stderr,
        )
        return 2
    try:
        report = backup_embedded(settings.data_dir, Path(args.out))
    except BackupError as error:
        print(f"hub: backup failed: {error}", file=sys.stderr)
        return 1
    print(
        f"hub: backup of {report.source} written to {report.target}: {report.total} "
        f"document(s) in {len(report.documents)} collection(s), "
        f"{report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s"
    )
    print(f"hub: to restore, make it the only file of a data_dir, named {report.source.name}")
    return 0


async def _dump(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from hub.store import Store
    from hub.store.dump import DumpError, export_database, import_database

    def progress(name: str) -> ProgressBar:
        return ProgressBar(f"{args.command}ing {name}")

    store = await Store.for_settings(settings)
    try:
        if args.command == "export":
            report = await export_database(store.db, Path(args.out), progress)
        else:
            report = await import_database(store.db, Path(args.dir), progress)
    except DumpError as error:
        print(f"hub: {args.command} failed: {error}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    done = "exported from" if args.command == "export" else "imported into"
    print(
        f"hub: {report.total} document(s) in {len(report.documents)} collection(s) "
        f"and {report.indexes} index(es) {done} database {report.database} "
        f"({'to' if args.command == 'export' else 'from'} {report.directory})"
    )
    for name, count in report.documents.items():
        print(f"  {name}: {count}")
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    from hub.store.embedded import EmbeddedStoreError

    settings = _settings(args.config)
    redactor = setup_logging("WARNING", settings.logging.format, settings.secrets)
    try:
        return asyncio.run(_dump(settings, args))
    except (PyMongoError, EmbeddedStoreError) as error:
        print(f"hub: store: {redactor.text(str(error))}", file=sys.stderr)
        return 1


async def _greetings_run(settings: Settings, on: date) -> int:
    import secrets

    from hub.app import build_adapters
    from hub.metrics import Metrics
    from hub.services.events import EventBus, Events
    from hub.services.runtime import Hub
    from hub.store import Store
    from scheduler.greetings import GreetingJob

    store = await Store.for_settings(settings)
    hub = Hub(
        settings=settings,
        instance_id="cli-" + secrets.token_hex(4),
        metrics=Metrics(),
        bus=EventBus(),
        store=store,
    )
    try:
        await store.ensure_indexes()
        hub.events = Events(store, hub.bus, hub.instance_id)
        hub.adapters = build_adapters(hub)  # not started: only their reply rules are asked
        counts = await GreetingJob(hub).catch_up(on)
    finally:
        await store.close()
    skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.skipped.items()))
    print(
        f"hub: greetings of {on.isoformat()}: {counts.sent} sent, {counts.already} already sent, "
        f"{sum(counts.skipped.values())} skipped" + (f" ({skipped})" if skipped else "")
    )
    if counts.sent:
        print("hub: queued in the outbox; a running `hub serve` sends them now")
    return 0


def cmd_greetings_run(args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    from hub.store.embedded import EmbeddedStoreError

    try:
        on = date.fromisoformat(args.date)
    except ValueError:
        print(f"hub: --date: not a date (YYYY-MM-DD): {args.date!r}", file=sys.stderr)
        return 2
    settings = _settings(args.config)
    redactor = setup_logging("WARNING", settings.logging.format, settings.secrets)
    try:
        return asyncio.run(_greetings_run(settings, on))
    except (PyMongoError, EmbeddedStoreError) as error:
        print(f"hub: store: {redactor.text(str(error))}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hub", description="Omnichannel communication hub")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the hub (webhooks, API, inbox, dispatcher)")
    serve.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate the config and reach the store")
    check.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    check.set_defaults(func=cmd_check)
    agents = sub.add_parser("agents", help="manage agents").add_subparsers(
        dest="agents_command", required=True
    )
    add = agents.add_parser("add", help="create an agent")
    add.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    add.add_argument("--email", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--role", required=True, choices=["admin", "supervisor", "agent"])
    add.add_argument("--password-env", help="read the password from this environment variable")
    add.set_defaults(func=cmd_agents_add)
    contacts = sub.add_parser("contacts", help="manage contacts").add_subparsers(
        dest="contacts_command", required=True
    )
    imp = contacts.add_parser("import", help="import contacts from a CSV file")
    imp.add_argument("file", metavar="FILE.csv")
    imp.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    imp.set_defaults(func=cmd_contacts_import)
    greetings = sub.add_parser("greetings", help="birthday and holiday greetings").add_subparsers(
        dest="greetings_command", required=True
    )
    run = greetings.add_parser("run", help="send the greetings of a date not sent yet (catch-up)")
    run.add_argument("--date", required=True, help="the date, YYYY-MM-DD")
    run.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    run.set_defaults(func=cmd_greetings_run)
    backup = sub.add_parser("backup", help="a consistent copy of the embedded store, while it runs")
    backup.add_argument("--out", required=True, metavar="FILE")
    backup.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    backup.set_defaults(func=cmd_backup)
    export = sub.add_parser("export", help="every collection as extended-JSON lines")
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    export.set_defaults(func=cmd_dump)
    load = sub.add_parser("import", help="load an export into an empty store")
    load.add_argument("dir", metavar="DIR")
    load.add_argument("--config", help="config file (default: $HUB_CONFIG)")
    load.set_defaults(func=cmd_dump)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
