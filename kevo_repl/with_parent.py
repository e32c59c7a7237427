"""`python -m kevo_repl.with_parent [--signal TERM|KILL] PARENT_PID ARGS...`: run
`kevo-repl ARGS...` in a process that the kernel signals (SIGKILL unless told) when its
parent dies, however it dies (PR_SET_PDEATHSIG). The HA agent starts its node this way
(SIGKILL: a killed agent never leaves a primary writing on its own), and so does the demo
(SIGTERM: its nodes shut down cleanly when the demo is killed).

The death signal is set here, in the child itself, and not by a `preexec_fn` between fork and
exec: the parent runs gRPC threads, and a fork that runs Python code in the child runs gRPC's
fork handlers there, which now and then crashed the child before it could exec (a SIGSEGV or
"epoll_wait error: Bad file descriptor"), failing the node's start. Without a `preexec_fn`
the child is spawned without running them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1
#: exit code when the parent was gone before the death signal was set
ORPHANED = 70
_SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}


def command(parent_pid: int, args: list[str], death_signal: str = "KILL") -> list[str]:
    """The argv that runs `kevo-repl ARGS...` dying with `parent_pid`."""
    if death_signal not in _SIGNALS:
        raise ValueError(f"death signal {death_signal!r}: expected one of {sorted(_SIGNALS)}")
    return [sys.executable, "-m", __name__.removesuffix(".__main__"), "--signal", death_signal,
            str(parent_pid), *args]


def main() -> None:
    args = sys.argv[1:]
    sig = signal.SIGKILL
    if args[:1] == ["--signal"]:
        sig = _SIGNALS[args[1]]
        args = args[2:]
    parent = int(args[0])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the signal was set: never run alone
        sys.exit(ORPHANED)
    # the death signal survives exec; the console script when installed, so that
    # `ps | grep kevo-repl` finds the node
    script = Path(sys.executable).parent / "kevo-repl"
    if script.exists():
        os.execv(script, [str(script), *args[1:]])
    os.execv(sys.executable, [sys.executable, "-m", "kevo_repl", *args[1:]])


if __name__ == "__main__":
    main()
