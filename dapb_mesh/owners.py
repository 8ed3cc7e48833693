"""Who owns what the testbed and the datapath create, so that what a crashed run left can be found and removed.

Each run (a set of pods, a mesh, a BPF instance) writes /run/dapb/owners/<name> with its pid. A name whose pid is
no longer alive is stale; ``stale()`` lists them for the next start or ``dapb testbed down`` to remove. Nothing
without an owner file is ever touched: it may belong to a run that is just starting.
"""

from __future__ import annotations

import os
from pathlib import Path

OWNERS = Path("/run/dapb/owners")


def register(name: str) -> None:
    OWNERS.mkdir(parents=True, exist_ok=True)
    (OWNERS / name).write_text(str(os.getpid()))


def release(name: str) -> None:
    (OWNERS / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(kind: str) -> list[str]:
    """Names (starting with ``kind``-) whose owner process is gone."""
    if not OWNERS.is_dir():
        return []
    out = []
    for entry in OWNERS.glob(f"{kind}-*"):
        try:
            pid = int(entry.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if not pid or not _alive(pid):
            out.append(entry.name)
    return out
