"""The one exception type for mistakes a user can make.

Anything raised as `Owl3Error` carries a message that says what is wrong and what to do; the CLI prints
it as one line and exits with code 2. Programming errors stay ordinary exceptions (and tracebacks).
"""


class Owl3Error(Exception):
    """A user-facing error: bad path, bad media, wrong placeholder count, prompt too long, ..."""
