"""Fixtures of the pytest suite: a database with pgcdc on a real cluster.

The suite runs against a cluster that pg_test's `python` test starts
(`cargo test -p pg_test --test python`, part of `make test`); it says so
and fails when run without one.
"""

import itertools
import os
import subprocess

import pytest

_names = itertools.count()


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite with `cargo test -p pg_test --test python` (or `make test`)")
    return value


class Database:
    """A database with the pgcdc extension, and psql to change it."""

    def __init__(self, name: str):
        self.name = name
        self.host = env("PGCDC_TEST_HOST")
        self.port = env("PGCDC_TEST_PORT")
        self.conninfo = f"host={self.host} port={self.port} user=postgres dbname={name}"

    def conninfo_as(self, user: str, password: str) -> str:
        return f"host={self.host} port={self.port} user={user} password={password} dbname={self.name}"

    def sql(self, text: str, user: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(env("PGCDC_TEST_BINDIR"), "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", self.port, "-U", user, "-d", self.name, "-c", text],
            capture_output=True, text=True, check=check,
        )

    def rows(self, query: str) -> list:
        """The rows of `query`, each a list of its text fields."""
        out = self.sql(query).stdout
        return [line.split("|") for line in out.splitlines() if line]


@pytest.fixture
def db(request):
    """A fresh database with pgcdc; its streams are dropped afterwards."""
    name = f"py{next(_names)}_{request.node.name[:40]}".lower()
    admin = Database("postgres")
    admin.sql(f'CREATE DATABASE "{name}"')
    database = Database(name)
    database.sql("CREATE EXTENSION pgcdc")
    yield database
    for (slot,) in database.rows("SELECT slot_name FROM pgcdc.streams"):
        database.sql(f"SELECT cdc_drop('{slot}')", check=False)


@pytest.fixture
def cli() -> str:
    """The `pgcdc` command line (for `pgcdc serve`)."""
    return env("PGCDC_TEST_CLI")
