"""Database helpers shared by app.py and migrate.py: DATABASE_URL parsing,
connections and the list of migrations (migrations/NNN_name.sql)."""

import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

ACCEPTED_URLS = "sqlite:PATH (relative to the working directory) or sqlite:///ABSOLUTE/PATH"
MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
MIGRATION_FILE = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")


class Migration(NamedTuple):
    version: int
    name: str  # e.g. "001_create_shipments"
    sql: str


def parse_url(url: str) -> str:
    """Return the file path named by a sqlite: DATABASE_URL.

    Raises ValueError saying what is accepted. The URL itself is never
    echoed: in other deployments it may carry a password."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite://"):]  # keep the leading slash
    elif url.startswith("sqlite:") and not url.startswith("sqlite://"):
        path = url[len("sqlite:"):]
    else:
        scheme = url.split(":", 1)[0] if ":" in url else ""
        got = f"scheme {scheme!r}" if re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) else "no sqlite: scheme"
        raise ValueError(f"DATABASE_URL must be {ACCEPTED_URLS} ({got})")
    if not path or path.endswith("/"):
        raise ValueError(f"DATABASE_URL must name a database file: {ACCEPTED_URLS}")
    return path


def connect(path: str, create: bool = False) -> sqlite3.Connection:
    """Open the database. Without create, a missing file is an error rather
    than a new empty database. Transactions are explicit (see transaction)."""
    uri = Path(path).resolve().as_uri() + ("?mode=rwc" if create else "?mode=rw")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for file in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.fullmatch(file.name)
        if not match:
            raise ValueError(f"{file.name}: migration files must be named NNN_name.sql (e.g. 003_add_weight.sql)")
        migrations.append(Migration(int(match[1]), file.stem, file.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{directory}: two migration files share a version number")
    return migrations


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def missing_migrations(conn: sqlite3.Connection) -> list[Migration]:
    """Migrations this code ships that the database has not applied yet.

    A database *ahead* of the code (a newer release migrated it) is fine:
    migrations are expected to be backward compatible, so the previous
    release keeps serving during a deploy and after a rollback."""
    applied = applied_versions(conn)
    return [m for m in load_migrations() if m.version not in applied]
