"""What an operation of the store asks of its database, and the two loops that answer it.

Every operation (offer, accept, report, ...) is written once, as a generator: it yields a
:class:`Stmt` and is sent back its result (a count, rows, a row, a value), or has the
database's error thrown in. It does no I/O of its own, so the same operation runs on both
engines: the SQLite driver steps it on its writer thread against ``sqlite3``
(:func:`run_sync`), the PostgreSQL driver on the event loop against asyncpg
(:func:`run_async`). A driver decides only how and in which transaction; the rules and
the SQL live in the operation. SQL is written with PostgreSQL's ``$1, $2, ...``
placeholders; what differs between the engines is in ``dialect.py``.

``@write`` and ``@read`` turn a generator method into the store's async method. Drivers
take a factory rather than a generator because a write may run twice: the SQLite writer
replays a batch after one of its writes failed, PostgreSQL replays a transaction it
aborted for a deadlock.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from smsgw.store.dialect import Dialect

T = TypeVar("T")
P = ParamSpec("P")
log = logging.getLogger(__name__)


class Kind(enum.Enum):
    EXECUTE = "execute"  # -> the number of rows it changed
    FETCH = "fetch"  # -> every row
    FETCHROW = "fetchrow"  # -> the first row, or None
    FETCHVAL = "fetchval"  # -> the first column of the first row, or None
    MANY = "many"  # args: one argument tuple per run -> None
    COPY = "copy"  # sql: a table; args: (columns, records) -> None
    AFTER = "after"  # args: (fn,): called on the event loop once the transaction committed


# The members as plain names: looking a member up on its enum class costs 65 ns, and the
# drivers test a statement's kind several times for every statement they run.
EXECUTE, FETCH, FETCHROW, FETCHVAL, MANY, COPY, AFTER = Kind


Stmt = tuple[Kind, str, tuple[Any, ...]]
"""(kind, sql, args): a plain tuple, because one is made for every statement run."""


Op = Generator[Stmt, Any, T]
"""An operation: yields statements, is sent their results, returns its answer."""


# An operation that runs nothing: ``yield from NOTHING`` makes no generator (an empty
# iterator, exhausted for good, so one serves every caller).
NOTHING: Op[None] = iter(())  # type: ignore[assignment]


def execute(sql: str, *args: Any) -> Stmt:
    return (EXECUTE, sql, args)


def fetch(sql: str, *args: Any) -> Stmt:
    return (FETCH, sql, args)


def fetchrow(sql: str, *args: Any) -> Stmt:
    return (FETCHROW, sql, args)


def fetchval(sql: str, *args: Any) -> Stmt:
    return (FETCHVAL, sql, args)


def many(sql: str, rows: Iterable[Sequence[Any]]) -> Stmt:
    return (MANY, sql, tuple(tuple(r) for r in rows))


def after_commit(fn: Callable[[], None]) -> Stmt:
    """``fn`` runs on the event loop once this write has committed, and never if it did
    not (an in-memory cache that must follow only what is durable, a wake-up)."""
    return (AFTER, "", (fn,))


def copy(table: str, columns: Sequence[str], records: Iterable[Sequence[Any]]) -> Stmt:
    """Bulk insert: PostgreSQL's COPY, SQLite's ``executemany``, in the same transaction."""
    return (COPY, table, (tuple(columns), [tuple(r) for r in records]))


class Params:
    """Numbers the arguments of a statement built piece by piece (filters, SET lists)."""

    def __init__(self, *first: Any) -> None:
        self.values: list[Any] = list(first)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


class Rollback(Exception):
    """Raised by an operation whose precondition failed after it wrote: its writes are
    undone and the caller gets ``value``, not an exception."""

    def __init__(self, value: Any = None) -> None:
        super().__init__(value)
        self.value = value


class UniqueViolation(Exception):
    """A unique constraint refused a write (each driver maps its engine's error to this)."""


class Driver(Protocol):
    """Runs operations: the SQLite driver or the PostgreSQL one."""

    @property
    def dialect(self) -> Dialect: ...

    async def open(self) -> list[str]:
        """Connect and apply pending migrations; returns what was applied."""

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def migrate(self) -> list[str]: ...

    async def write(self, make: Callable[[], Op[T]]) -> T:
        """Run the operation in a transaction of its own (SQLite: shared with the writes
        queued beside it, each undone alone if it fails); durable when this returns, its
        ``after_commit`` functions called by then."""

    async def read(self, make: Callable[[], Op[T]], *, snapshot: bool = False) -> T:
        """Run a read-only operation; ``snapshot``: all its statements see one state."""

    async def watch(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Call ``changed`` when another process may have changed the webhooks."""


def run_sync(op: Op[T], do: Callable[[Stmt], Any]) -> T:
    """Run ``op``, each statement by ``do`` (a thread's own connection)."""
    send, throw = op.send, op.throw
    try:
        stmt = send(None)
        while True:
            try:
                result = do(stmt)
            except Exception as exc:
                stmt = throw(exc)  # the operation may catch it (a unique key taken)
            else:
                stmt = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_async(op: Op[T], do: Callable[[Stmt], Awaitable[Any]]) -> T:
    """Run ``op``, awaiting each statement of ``do``."""
    send, throw = op.send, op.throw
    try:
        stmt = send(None)
        while True:
            try:
                result = await do(stmt)
            except Exception as exc:
                stmt = throw(exc)
            else:
                stmt = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def run_after(after: list[Callable[[], None]]) -> None:
    """Call what a committed write asked for, each once (many events of one write wake
    the worker once), on the event loop; one that fails does not stop the others."""
    for fn in dict.fromkeys(after):
        try:
            fn()
        except Exception:
            log.exception("after-commit call %r failed", fn)


class HasDriver(Protocol):
    _driver: Driver


S = TypeVar("S", bound=HasDriver)
Method = Callable[Concatenate[S, P], Op[T]]
AsyncMethod = Callable[Concatenate[S, P], Coroutine[Any, Any, T]]


def write(fn: Method[S, P, T]) -> AsyncMethod[S, P, T]:
    """The store's method that runs this operation as a durable write."""

    @functools.wraps(fn)
    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        # Not a coroutine of its own: the driver's is returned, one frame less for the
        # event loop to step through on every write of the hot path.
        return self._driver.write(lambda: fn(self, *args, **kwargs))

    return run


def read(fn: Method[S, P, T]) -> AsyncMethod[S, P, T]:
    """The store's method that runs this operation as a read."""

    @functools.wraps(fn)
    def run(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        return self._driver.read(lambda: fn(self, *args, **kwargs))

    return run
