"""The one exception type for mistakes a user can make.

Anything raised as `Owl3Error` carries a message that says what is wrong and what to do; the CLI prints
it as one line and exits with code 2. Programming errors stay ordinary exceptions (and tracebacks).
"""


class Owl3Error(Exception):
    """A user-facing error: bad path, bad media, wrong placeholder count, prompt too long, ..."""


class MediaTooLarge(Owl3Error):
    """An image (or a video frame) with more pixels than the caller's limit; the message names the limit."""

    def __init__(self, message: str, *, width: int, height: int, limit: int) -> None:
        super().__init__(message)
        self.width, self.height, self.limit = width, height, limit
