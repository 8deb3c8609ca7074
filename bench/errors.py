"""Errors a user can cause, and signals that stop a command. The CLI catches them once: one line on
stderr, exit code 2 for a UsageError, 128 + the signal number for a stop."""
from __future__ import annotations

import contextlib
import errno
import signal
import threading

# signals that mean "stop now, cleanly": SLURM's scancel / time limit (TERM), its pre-timeout warning
# (USR2, sent with --signal), a closed terminal (HUP)
STOP_SIGNALS = ("SIGTERM", "SIGUSR2", "SIGHUP")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class UsageError(Exception):
    """Bad input from the user (unknown name, missing/corrupt file, malformed value)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised in the main thread like Ctrl-C's KeyboardInterrupt: the runner records the
    attempt as `interrupted` (its checkpoint stays) and the CLI says how to resume."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_signals_interrupt(names: tuple[str, ...] = STOP_SIGNALS):
    """While active (main thread only), SIGTERM/SIGUSR2/SIGHUP raise Interrupted instead of killing the
    process without a word; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        raise Interrupted(signum)

    previous = {}
    for name in names:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def disk_full_line(e: OSError, where: str = "") -> str | None:
    """One line for a full disk / exhausted quota, None for any other OSError."""
    if getattr(e, "errno", None) not in DISK_FULL:
        return None
    target = e.filename or where or "the results root"
    return (f"no space left on the device holding {target} ({e.strerror}); nothing saved was lost: free space "
            f"(or use another --results) and re-run the same command to continue from the last checkpoint")
