"""The project's user-error type: bad input the user can fix, as opposed to a bug.

``InputError`` (a ``ValueError``) is raised for a file, key or setting that is wrong; its message
names it and says what to change. The trainer's command line reports these as one line with exit
status 2 and shows every other exception with its traceback (exit status 1), so a genuine bug is
never mistaken for a bad spec. ``ConfigError``, ``HubUploadError``, ``ModelUnavailableError``,
``HubUnavailableError`` and ``SourceChangedError`` are kinds of it.
"""

from __future__ import annotations


class InputError(ValueError):
    """A file, key or setting the user gave is wrong; the message names it and what to change."""
