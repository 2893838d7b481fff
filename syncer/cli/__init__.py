"""The command line (click only): parse, call the library, print, map errors to exit codes.

One module a group of commands, like restic's ``cmd_*.go``: ``jobs`` (pull, push, restore), ``reports``
(status, verify, ls), ``admin`` (ack, keygen, demo, fake-server); ``base`` holds the ``main`` group and
what they share.  May import anything of syncer; nothing imports it but ``__main__`` and the entry point.
The library never imports click.
"""

from syncer.cli import admin, jobs, reports  # noqa: F401 - each registers its commands on main
from syncer.cli.base import main

__all__ = ["main"]
