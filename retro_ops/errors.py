"""The errors retro-ops raises: each subclasses a builtin and says what was wrong with which input."""

import os
import signal
from typing import Literal, NoReturn


class RetroOpsError(Exception):
    """Base of every retro-ops error."""


class SettingsError(RetroOpsError, ValueError):
    """A setting (profile, database URL) that names nothing usable."""


class CorpusError(RetroOpsError, ValueError):
    """A corpus as a whole cannot be read (missing path, nothing readable in it)."""


class UnknownCorpusError(RetroOpsError, KeyError):
    """A corpus name that the catalog does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a readable sentence
        return str(self.args[0]) if self.args else "unknown corpus"


class EmbedderError(RetroOpsError, ValueError):
    """An embedder folder that is not a usable local Hugging Face model."""


class CatalogError(RetroOpsError, RuntimeError):
    """The catalog cannot be opened or migrated."""


class RetrievalSetError(RetroOpsError, ValueError):
    """A retrieval set that cannot be defined or has no version yet."""


class UnknownRetrievalSetError(RetroOpsError, KeyError):
    """A retrieval-set name that the catalog does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown retrieval set"


class IndexBuildError(RetroOpsError, ValueError):
    """Vectors or settings an index cannot be built from (NaN, wrong dimension, bad factory)."""


class IndexIntegrityError(RetroOpsError, RuntimeError):
    """An index on disk that must not be loaded (digest mismatch, wrong size, unknown build)."""


class UnknownModelError(RetroOpsError, KeyError):
    """A model reference that the catalog does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


class CheckpointError(RetroOpsError, ValueError):
    """A folder that is not a retro-ops checkpoint, or holds files it must not load (pickle)."""


CrashMode = Literal["raise", "kill"]  # how a test hook crashes: see SimulatedCrash.at


class SimulatedCrash(RetroOpsError, RuntimeError):
    """A test hook's crash (`crash_at=`). With mode "kill" it is no exception at all but a real
    SIGKILL of this process: no `finally`, no atexit, no user-space buffer survives (what an OOM
    kill leaves; a power cut also loses what was not fsynced, which is why writers fsync)."""

    @classmethod
    def at(cls, where: str, mode: CrashMode = "raise") -> NoReturn:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise cls(f"simulated crash {where}")


class InvalidNameError(RetroOpsError, ValueError):
    """A corpus or retrieval-set name that is unsafe to use in a path, partition key or filter."""


class ModelIntegrityError(RetroOpsError, RuntimeError):
    """A checkpoint a file of which does not hash to what the catalog recorded, or that the
    catalog does not know: never loaded as the registered model."""


class AdminTokenError(RetroOpsError, ValueError):
    """An admin token that is too short, or a non-loopback bind without one."""


class ServerOverloadedError(RetroOpsError, RuntimeError):
    """The server's queue is full (or a request waited too long for it): answered 503."""


class GenerationTimeoutError(RetroOpsError, TimeoutError):
    """A generation ran past its time limit and was stopped: answered 504."""


class RetrieveTimeoutError(RetroOpsError, TimeoutError):
    """A /retrieve request (its wait for a turn included) ran past its time limit: answered 504."""


class LineageError(RetroOpsError, LookupError):
    """A document, chunk or reference that a lineage audit cannot find in the catalog."""


class ReadOnlyQueryError(RetroOpsError, PermissionError):
    """An ad-hoc audit statement that would write, attach or export: refused before it runs."""


class AuditQueryError(RetroOpsError, ValueError):
    """A read-only audit query that DuckDB could not run (unknown view or column, bad syntax)."""


class AuditLimitError(AuditQueryError):
    """An audit query stopped at one of its limits (statement timeout, memory): the message names it."""


class ExclusionError(RetroOpsError, ValueError):
    """An exclusion that cannot be recorded or revoked (unknown chunk or document, no reason)."""


class ExclusionListError(RetroOpsError, RuntimeError):
    """The exclusion list cannot be read: retrieval refuses to answer rather than answer unfiltered."""


class ScorerError(RetroOpsError, ValueError):
    """A scorer that cannot run: bad config, a model file whose hash does not match its package."""


class PolicyError(RetroOpsError, ValueError):
    """A policy file that cannot be used (unreadable, unknown scorer, bad threshold or scope)."""


class GenerationLogError(RetroOpsError, ValueError):
    """A generation-log setting or query that cannot be used (bad config value, unknown request id)."""


class ErasureError(RetroOpsError, RuntimeError):
    """An erasure could not remove every copy it must (an older LanceDB version stays)."""


class BrokerUnavailableError(RetroOpsError, ConnectionError):
    """The message broker a cluster run needs (Celery's) does not answer: said before launching."""
