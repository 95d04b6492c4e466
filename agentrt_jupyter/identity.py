"""Who the kernel runs for: the name records, quotas and budgets are kept under."""

from __future__ import annotations

import getpass
import os


def current_user() -> str:
    """The JupyterHub user (`$JUPYTERHUB_USER`, set by the hub's spawner), else the OS user.

    On a hub every kernel runs as the same OS user, so the hub's name is the one that tells
    users apart; on a laptop the OS user is the only one there is.
    """
    hub_user = os.environ.get("JUPYTERHUB_USER", "").strip()
    if hub_user:
        return hub_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"
