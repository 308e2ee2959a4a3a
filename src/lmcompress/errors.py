"""The one error type users see.

Anything a user can cause (bad paths, bad columns, bad config) raises `LmcError` with a message that says what
is wrong and how to fix it. The CLI prints it as a single `lmcompress: error: ...` line and exits non-zero.
"""


class LmcError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    def __init__(self, message: str):
        # messages quote user-supplied names (columns, paths, ids) that may hold line breaks: escape them, so the
        # error stays one line whatever the input
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))
