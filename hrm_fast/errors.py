"""User-facing errors: the CLI prints ``hrm-fast: <message>`` on one line and exits non-zero."""


class UserError(Exception):
    """Bad input or state the user can fix; its message is one line naming the file and field."""

    exit_code = 2
