"""Whether a process that left a record of itself (host, pid, time) still runs.

Long-running writers (a search's driver in ``runs.json``, a search reading a pool) rewrite their
record every few seconds. One on this machine is known dead by its pid; one elsewhere, once its
record has not been rewritten for ``STALE_SECONDS``.
"""

from __future__ import annotations

import os
import socket
import time

STALE_SECONDS = 30.0  # a record not rewritten for this long is of a process that is gone (they rewrite every 10 s)


def stamp() -> dict:
    """This process's record: host, pid and the time now."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def live(record: dict | None) -> bool:
    """Whether the process of ``record``, other than this one, still runs."""
    if not record or time.time() - float(record.get("at", 0)) >= STALE_SECONDS:
        return False
    if record.get("host") != socket.gethostname():
        return True
    if record.get("pid") == os.getpid():
        return False
    return _alive(int(record["pid"]))


def seen_text(record: dict) -> str:
    """``process 123 on host, last seen 4 s ago``."""
    return f"process {record.get('pid')} on {record.get('host')}, last seen {time.time() - float(record['at']):.0f} s ago"


def retry_text(record: dict) -> str:
    """For a process on another host, when to try again if it is gone; "" for one on this host."""
    if record.get("host") == socket.gethostname():
        return ""
    return f", or if it is gone, retry in {STALE_SECONDS - (time.time() - float(record['at'])):.0f} s"
