"""The exception tree: one root, a few kinds, translated to one line at the CLI."""

from __future__ import annotations

from pathlib import Path


class WheelstockError(Exception):
    """Root of every error wheelstock raises on purpose; the CLI prints it as one line."""

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


class RegistryError(WheelstockError):
    """A registry entry is missing, unreadable or invalid."""


class UpstreamError(WheelstockError):
    """The upstream index could not answer as needed."""


class ProjectNotFound(UpstreamError):
    """Upstream has no such project (404)."""


class UpstreamUnavailable(UpstreamError):
    """Upstream could not be reached, timed out, or kept failing (after retries)."""


class FeedstockError(WheelstockError):
    """A feedstock or its template is invalid."""


class SourceRefused(WheelstockError):
    """The sdist a feedstock names is not the one upstream publishes; nothing is built."""


class HashMismatch(SourceRefused):
    """A downloaded file's sha256 differs from the one it was published with."""


class BuildError(WheelstockError):
    """A build could not run or produced no acceptable wheel."""


class ForgeError(WheelstockError):
    """The forge refused an operation (unknown PR, not open, git failure)."""


class GateError(WheelstockError):
    """An approval or rejection was refused by the trust rules."""


class GraphError(WheelstockError):
    """The dependency graph cannot be built or cannot answer a question as asked."""


class DistributionError(WheelstockError):
    """A wheel or sdist that is not what it claims to be (bot.dists)."""


class PublishError(WheelstockError):
    """Publishing into the index was refused (e.g. a filename with other bytes)."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def one_line(exc: BaseException, *, limit: int | None = None) -> str:
    """An exception as one line: its whole message with every run of whitespace one space,
    cut to ``limit`` characters (with "...") where a tool explains over many lines."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
