"""Release command: apply pending migrations/NNN_name.sql files in order.

Each migration runs in its own transaction together with its row in
schema_migrations, so it is applied completely or not at all. Running it
again is a no-op. Exit codes: 0 done, 1 a migration failed, 2 bad config.

    DATABASE_URL=sqlite:logistix.db python3 migrate.py
"""

import os
import sqlite3
import sys
from datetime import datetime, timezone

import db

SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


def fail(message: str, code: int) -> None:
    print(f"migrate: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    if not os.environ.get("DATABASE_URL"):
        fail("missing required config: DATABASE_URL", 2)
    try:
        path = db.parse_url(os.environ["DATABASE_URL"])
        migrations = db.load_migrations()
        conn = db.connect(path, create=True)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SCHEMA_MIGRATIONS)
        applied = db.applied_versions(conn)
    except (ValueError, sqlite3.Error) as e:
        fail(str(e), 2)

    pending = [m for m in migrations if m.version not in applied]
    for m in pending:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # executescript() commits any open transaction first, so BEGIN and
        # COMMIT go inside the script. Version and name come from the file
        # name (digits, lowercase letters and underscores only).
        script = (f"BEGIN IMMEDIATE;\n{m.sql}\n;\n"
                  f"INSERT INTO schema_migrations (version, name, applied_at) "
                  f"VALUES ({m.version}, '{m.name}', '{now}');\nCOMMIT;")
        try:
            conn.executescript(script)
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            at = max(applied, default=0)
            fail(f"{m.name} failed: {e}; rolled back, schema stays at version {at:03d}", 1)
        applied.add(m.version)
        print(f"migrate: applied {m.name}")

    state = "up to date" if not pending else f"applied {len(pending)} migration(s)"
    print(f"migrate: schema at version {max(applied, default=0):03d} ({state})")


if __name__ == "__main__":
    main()
