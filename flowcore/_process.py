"""Where a pid means something: the identity of the machine a process runs on.

A pid names a process only inside one PID namespace of one running kernel. Two
containers may share a host name (and a database on a shared volume) while each
numbers its processes from 1: asked about a pid recorded in the other, the
operating system answers about a process that is not the run's, or about none.
So a flow run records :data:`MACHINE` beside its host name and pid, and crash
detection asks the operating system about the pid only when the reader's
``MACHINE`` is the run's; any other reader judges the run by its heartbeat.

- On Linux: the kernel's boot id (``/proc/sys/kernel/random/boot_id``, new at
  every boot, the same in every container of that kernel) and the PID namespace
  (device and inode of ``/proc/self/ns/pid``, unique among a kernel's live
  namespaces). A reboot or another namespace is another machine.
- Elsewhere (macOS, Windows, the BSDs: no PID namespaces), the host name: every
  process of a host shares one table of pids.
- On a Linux whose ``/proc`` cannot be read, an identity of this process alone,
  so no other process judges its runs by pid: a crash is then found by heartbeat,
  later, but a live run is never taken for a dead one.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Final

from .ids import HOST

__all__ = ["MACHINE", "machine_identity"]

_BOOT_ID: Final = "/proc/sys/kernel/random/boot_id"
_PID_NAMESPACE: Final = "/proc/self/ns/pid"


def machine_identity() -> str:
    """This process's machine identity, worked out afresh (see the module's docstring)."""
    if not sys.platform.startswith("linux"):
        return f"{sys.platform}:{HOST}"
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            boot = f.read().strip()
        namespace = os.stat(_PID_NAMESPACE)
    except (OSError, ValueError):
        return f"process:{uuid.uuid4().hex}"  # nobody else may judge our pids
    return f"linux:{boot}:pidns:{namespace.st_dev}:{namespace.st_ino}"


#: The machine identity of this process, recorded on every flow run it starts.
MACHINE: Final = machine_identity()
