"""Exceptions shared by the prep builders.

`BadInput` marks one input (an image, a document, a reference) that is skipped and
reported; it never stops a build. `UsageError` means the whole command cannot run
(missing or empty input, unwritable output) and maps to exit code 2.
"""


class BadInput(Exception):
    """One unusable input. `kind` is the short reason used for counting in report.json."""

    def __init__(self, reason: str, kind: str = "bad_input"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class UsageError(Exception):
    """The command as given cannot produce a dataset (exit code 2)."""
