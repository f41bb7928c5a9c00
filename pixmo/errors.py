"""The project's one user-error type.

A user error names where the problem is (file, record, field) so the CLI can
print it as one line; a library caller can still catch it as ``ValueError``.
"""

from __future__ import annotations


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

    def one_line(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason
