"""Running the CLI in-process and reading its one-line errors."""

from hrm_fast.cli import main as cli_main


def one_line(capsys, prefix: str | None = None) -> str:
    """The command's stderr, asserted to be exactly one non-empty line with no traceback (and
    starting with ``prefix`` when given)."""
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    if prefix is not None:
        assert lines[0].startswith(prefix)
    return lines[0]


def run_cli(argv) -> int:
    """cli.main, with argparse's SystemExit turned into its code."""
    try:
        return cli_main(argv)
    except SystemExit as e:
        return int(e.code)
