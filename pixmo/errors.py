"""The project's user-error types: what went wrong, and where (file, record, field).

A user error names where the problem is (file, record, field) so a CLI can
print it as one line and exit with status 2; a library caller can still catch
it as ``ValueError``. A CLI reports an ``OSError`` the same way: it is a path
the user gave that could not be read or written.
"""

from __future__ import annotations

from collections.abc import Mapping


class PixmoError(ValueError):
    """A problem with user input, located by file, record (line or id) and field."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        record: str | int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.record = record
        self.field = field
        super().__init__(self.one_line())

    def _location(self) -> list[str]:
        out = []
        if self.file is not None:
            out.append(str(self.file))
        if self.record is not None:
            out.append(f"record {self.record}")
        return out

    def one_line(self) -> str:
        where = self._location()
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    @classmethod
    def from_os_error(cls, exc: OSError) -> PixmoError:
        """A path that could not be read or written (for a move, the destination)."""
        path = exc.filename2 if exc.filename2 is not None else exc.filename
        return cls(exc.strerror or str(exc), file=None if path is None else str(path))

    def located(self, **where: str | int | None) -> PixmoError:
        """The same error with ``file``, ``record`` or ``field`` replaced, for a caller that
        knows better where it happened (the file a config was read from)."""
        fields = {"file": self.file, "record": self.record, "field": self.field, **where}
        return type(self)(self.reason, **fields)

    def named(self, names: Mapping[str, str]) -> PixmoError:
        """This error as the user typed it; only a ConfigError's field is a setting they gave."""
        return self


class ConfigError(PixmoError):
    """A setting with a value it cannot take: ``ShardConfig.max_samples must be >= 1, got 0``.

    ``field`` is the setting as checked (``Class.name``); whoever knows the name the user
    typed renames it, so the same check reads ``--shard-samples must be >= 1, got 0`` on the
    command line and ``config.data.batch_size must be >= 1, got 0`` for a YAML key.
    """

    def one_line(self) -> str:
        what = f"{self.field} {self.reason}" if self.field is not None else self.reason
        where = self._location()
        return f"{', '.join(where)}: {what}" if where else what

    def named(self, names: Mapping[str, str]) -> PixmoError:
        """This error under ``names[field]`` (a command-line option) where ``names`` lists it."""
        if self.field in names:
            return self.located(field=names[self.field])
        return self

