"""Create the cluster's databases on its PostgreSQL server where they are missing: ``databases.py NAME...``.

MLflow keeps its runs and accounts in one database, Optuna its studies in another, on the same server. The
compose file runs this once per ``up``, before MLflow and the Ray head start. It connects with libpq's own
variables (PGHOST, PGUSER, PGPASSWORD, PGDATABASE).

Each database is created as UTF8 whatever the server's default: psycopg hands back bytes, not text, from a
SQL_ASCII database (the default of a server initialised without a locale, as the stand-in images for
PostgreSQL built from Debian packages are), which SQLAlchemy cannot read.
"""

from __future__ import annotations

import sys
import time

import psycopg
from psycopg import sql

#: How long to keep trying to connect: a server that has just reported healthy may still be restarting
#: after its first-start initialisation.
WAIT_SECONDS = 60


def main(names: list[str]) -> int:
    """Create each database in ``names`` that does not exist; 0 on success, 1 (one line on stderr) if the
    server cannot be reached."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            connection = psycopg.connect(autocommit=True, connect_timeout=5)
            break
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                lines = str(exc).strip().splitlines() or [type(exc).__name__]
                print(f"databases.py: cannot connect to PostgreSQL: {lines[-1]}", file=sys.stderr)
                return 1
            time.sleep(1)
    with connection:
        for name in names:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                create = "CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0"
                connection.execute(sql.SQL(create).format(sql.Identifier(name)))
                print(f"databases.py: created database {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
