"""The project's error type: a user mistake with one line of advice."""

from __future__ import annotations


class ErasekitError(Exception):
    """A mistake the user can fix. The message is one line saying what to do.

    The CLI prints the message and exits with status 2, without a traceback.
    """
