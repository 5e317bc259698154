"""A tuning study's storage: opening it (a SQLite file in the study's directory, or any Optuna storage URL that
workers on several machines share) with no secret in any message, claiming the study's identity atomically, and
telling a storage that failed under a running worker from the other errors."""

import contextlib
import copy
import fcntl
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models

from jaxrl_lander.config.errors import ConfigError, first_line
from jaxrl_lander.config.redact import MASK, redact

# How a study's worker processes get its storage URL: every user can read a process's command line (ps), only its
# owner its environment.
STORAGE_ENV = "JAXRL_LANDER_STORAGE"
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
MAX_RETRIES = 2  # a trial that kills its worker again and again is given up after this many retries
IDENTITY = "identity"  # the study user attribute that holds what the study was made with
CREATION_TRIES = 3  # workers creating a new database's tables at once collide; the later ones find them made


class Retry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a WAITING trial with its values), without what the failed attempt recorded
    about itself (its failure, a mark to queue it again): each attempt's attributes are its own."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        fresh = copy.deepcopy(trial)
        fresh.user_attrs = {}
        super().__call__(study, fresh)


class _Storage(RDBStorage):
    """Optuna's RDB storage, whose heartbeat thread skips a beat the storage refuses instead of dying with a
    traceback: the worker meets that failure at its next own call, and says so in one line."""

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(*STORAGE_ERRORS):
            super().record_heartbeat(trial_id)


def open_storage(url: str | None, sqlite_file: Path, heartbeat: int) -> RDBStorage:
    """The storage at `url`, or without one the SQLite file `sqlite_file` (its directory made, its tables created
    by one process at a time); a heartbeat every `heartbeat` seconds, stale after three missed. The file's path
    is handed to SQLite as it is, never read as a URL (where % ? # would be escapes, a query, a fragment)."""
    retry = Retry(max_retry=MAX_RETRIES)
    kwargs = dict(heartbeat_interval=heartbeat, grace_period=3 * heartbeat, heartbeat_stale_trial_callback=retry)
    if url is None:
        path = str(sqlite_file.absolute())
        engine = {"creator": lambda: sqlite3.connect(path, timeout=60, check_same_thread=False),
                  "poolclass": sqlalchemy.pool.QueuePool}
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(sqlite_file.parent / ".storage.lock"):
            return _opened(lambda: _Storage("sqlite://", engine_kwargs=engine, **kwargs), path)
    if not url:
        raise ConfigError("--storage must not be empty (leave it out for a SQLite file in the study's directory)")
    hide = _secret_hider(url)
    shown = hide(redact(url))
    try:
        parsed = sqlalchemy.make_url(url)
        backend = parsed.get_backend_name()
    except Exception as exc:  # a malformed URL (a port that is not a number, no scheme)
        raise ConfigError(f"cannot open the study storage {shown}: {hide(redact(first_line(exc)))}") from None
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(f"the study storage {shown} is in memory: no other worker could join it, and it would be"
                          " gone with this process; give a file (sqlite:////path/study.db), or leave --storage out")
    connect = {"sqlite": {"timeout": 60}, "postgresql": {"connect_timeout": 10}}.get(backend, {})
    engine = {"connect_args": connect, "pool_pre_ping": True}  # a server restarted between two calls: reconnect
    return _opened(lambda: _Storage(url, engine_kwargs=engine, **kwargs), shown, hide)


def _secret_hider(url: str):
    """A function masking, in a text, the password of the storage URL `url` as typed, and its parts: a password
    holding a raw '@' or a space is cut by the URL's parser, which then names a piece of it as the host."""
    found = re.match(r"[^:/\s]+://[^:/@]*:(.*)@[^@]*$", url)
    secret = found[1] if found else ""
    pieces = sorted({secret, *re.split(r"[@\s]", secret)} - {""}, key=len, reverse=True)
    pieces = [piece for piece in pieces if len(piece) >= 3 or piece == secret]

    def hide(text: str) -> str:
        for piece in pieces:
            text = text.replace(piece, MASK)
        return text

    return hide


def _opened(make, shown: str, hide=lambda text: text) -> RDBStorage:
    for _ in range(CREATION_TRIES):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:  # a collision, or refused
            error = exc
        except Exception as exc:  # an unreachable server, bad credentials, an unknown dialect or driver
            error = exc
            break
    raise ConfigError(f"cannot open the study storage {shown}: {hide(redact(first_line(error)))}") from None


def canonical(value: Any) -> str:
    """`value` as one JSON text: keys sorted, no NaN (which equals nothing, itself included)."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


def claim_identity(storage: RDBStorage, study_id: int, identity: dict[str, Any],
                   same: dict[str, Callable[[Any], bool]] | None = None) -> list[str]:
    """Make `identity` the study's, or compare it with the one the study has: the keys in which they differ (none:
    this worker may join). One INSERT under the table's UNIQUE(study_id, key): of workers claiming at once, on any
    RDB, exactly one writes its identity, and each other reads that one and compares canonical texts, or, for a
    key of `same`, asks same[key](the value held) whether it is this identity's."""
    table, text = models.StudyUserAttributeModel.__table__, canonical(identity)
    try:
        with storage.engine.begin() as db:
            db.execute(table.insert().values(study_id=study_id, key=IDENTITY, value_json=text))
        return []
    except sqlalchemy.exc.IntegrityError:  # claimed before us
        with storage.engine.connect() as db:
            held = db.execute(sqlalchemy.select(table.c.value_json).where(
                table.c.study_id == study_id, table.c.key == IDENTITY)).scalar_one()
    if held == text:
        return []
    held = json.loads(held)
    same = same or {}
    return [key for key in identity if key not in held or not (
        same[key](held[key]) if key in same else canonical(held[key]) == canonical(identity[key]))]


def storage_failure(exc: BaseException) -> BaseException | None:
    """The storage error behind `exc`, if one is (the driver's own, where Optuna wrapped it): Optuna reports a
    storage that fails while it ends a trial as an error of its own (an UnboundLocalError, an AssertionError),
    raised while handling the storage's."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, STORAGE_ERRORS):
            found = exc
        elif found is not None:
            break
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return found


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
