"""`python -m kevo_repl.ha.with_parent PARENT_PID ARGS...`: run `kevo-repl ARGS...` in a process
that the kernel kills (SIGKILL) when its parent, the HA agent, dies (PR_SET_PDEATHSIG).

The death signal is set here, in the child itself, and not by a `preexec_fn` between fork and
exec: the agent's process runs gRPC threads, and a fork that runs Python code in the child
runs gRPC's fork handlers there, which now and then crashed the child before it could exec
("epoll_wait error: Bad file descriptor"), failing a freshly elected primary's start. Without
a `preexec_fn` the child is spawned without running them.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1
#: exit code when the parent was gone before the death signal was set
ORPHANED = 70


def main() -> None:
    parent = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the agent died before the signal was set: never run alone
        sys.exit(ORPHANED)
    sys.argv = ["kevo-repl", *sys.argv[2:]]
    runpy.run_module("kevo_repl", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
