"""Which failures are the machine's, not a job's: the sweeper stops on them rather than
failing trial after trial."""
from __future__ import annotations

import errno


#: faults of the machine, not of a job: the disk is full or read-only
MACHINE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def machine_fault(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it) is a fault of the machine that every next job would
    hit too; the sweeper stops rather than failing trial after trial."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:
            return True
        if "database or disk is full" in str(e) or "readonly database" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False
