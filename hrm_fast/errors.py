"""Every error the CLI turns into one line, and every exit code the tool returns.

The CLI prints ``hrm-fast: <message>`` on one line and exits with the error's ``exit_code``,
never a traceback.
"""

EXIT_OK = 0
EXIT_PEER_LOST = 1
EXIT_SIDE_FAILED = 1  # bench --against: one side's step or build raised
EXIT_USER_ERROR = 2
EXIT_PROBE_FAILED = 3
EXIT_WRITE_FAILED = 4
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT (SIGTERM ends the same way)
EXIT_BROKEN_PIPE = 141  # the shell's code for SIGPIPE: the reader of stdout went away


class UserError(Exception):
    """Bad input or state the user can fix; its message is one line naming the file and field."""

    exit_code = EXIT_USER_ERROR


class DataError(UserError):
    """Bad task data. ``str(err)`` is one line: ``<file>: <what is wrong>``."""

    def __init__(self, path, msg: str):
        self.path = str(path)
        self.msg = " ".join(str(msg).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.msg}")


class WriteFailed(UserError):
    """A write failed after work had begun; the message says what is still intact."""

    exit_code = EXIT_WRITE_FAILED


class PeerLost(UserError):
    """A collective failed: another rank died or stopped answering within the timeout."""

    exit_code = EXIT_PEER_LOST


class SideFailed(UserError):
    """``bench --against``: one side (hrm-fast's or the official code's) failed; the message
    is its last error line."""

    exit_code = EXIT_SIDE_FAILED


class StopTraining(Exception):
    """Not an error: a train-loop hook ends the run cleanly after the checkpoint just saved
    (exit 0); the message is the one-line reason (say, an early stop)."""

    exit_code = EXIT_OK
