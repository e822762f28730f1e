"""This machine's PostgreSQL and Redis, as the native Celery topology uses them.

``tests/test_celery_native.py`` and the scale-out benchmark (``benchmarks/scaleout.py``) each run
Airflow's CeleryExecutor on them: PostgreSQL on 127.0.0.1:5432 (user ``postgres``, trust auth),
Redis on 127.0.0.1:6379. Each creates its own databases and claims a Redis DB number of its own.
"""

from __future__ import annotations

import socket

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
SERVICES = (("PostgreSQL", PG_HOST, PG_PORT), ("Redis", REDIS_HOST, REDIS_PORT))


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def unreachable() -> list[str]:
    """``"<service> at <host>:<port>"`` for each of the two services that does not answer."""
    return [f"{what} at {host}:{port}" for what, host, port in SERVICES if not reachable(host, port)]


def pg(dbname: str = "postgres"):
    """An autocommit psycopg2 connection to ``dbname``."""
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    return conn


def pg_url(db: str, scheme: str = "postgresql+psycopg2") -> str:
    return f"{scheme}://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


def redis_db(n: int):
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n, socket_timeout=5)


def claim_redis_db(key: str, token: str) -> int | None:
    """The highest empty Redis DB number (15 down to 1), claimed by setting ``key`` to ``token`` so that
    parallel users skip it; None when every one is in use."""
    for n in range(15, 0, -1):
        with redis_db(n) as r:
            if r.dbsize() == 0 and r.set(key, token, nx=True) and r.dbsize() == 1:
                return n
    return None
