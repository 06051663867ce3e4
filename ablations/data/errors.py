"""The one exception type for problems a user can cause with their data (files, CSVs, volumes)."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data problem the user can fix: the message names the file, the problem and the fix."""

    def __init__(self, path: "str | Path | None", problem: "str | None" = None, fix: str = "") -> None:
        if problem is None:
            # DataError(text): how a DataLoader re-raises a worker's error in this process, the text being
            # the worker's traceback; keep its last line, the original message, for the user.
            last = str(path).strip().splitlines()[-1] if str(path).strip() else ""
            self.path, self.problem, self.fix = None, last.split("DataError: ", 1)[-1], ""
            super().__init__(self.problem)
            return
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}" + (f"; {fix}" if fix else ""))
