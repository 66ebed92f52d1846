"""The one error type of the data pipeline.

Every problem with input data (missing file, JSON not in the schema, ground truth of the wrong
length, a video that does not decode, a pose track past the video's end) raises `DataError` with
a message that names the file and the problem. It is a ValueError, so callers that already catch
ValueError keep working; the `mgnet prepare` CLI prints it and exits non-zero.
"""
from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data; the message names the offending file (or argument) and the problem."""

    def __init__(self, path, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")
