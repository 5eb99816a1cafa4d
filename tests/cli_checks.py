"""The check every "bad input" test makes: exit status 2 and one line on stderr, no traceback.

``geomtraj`` promises that unusable input (a config, an option, a store) gives a one-line error
with exit status 2, never a traceback or an "internal error" (docs/robustness.md).
"""

from __future__ import annotations

from geomtraj.cli import main


def one_line_exit_2(argv: list[str], capsys, expected: str = "") -> str:
    """Run ``geomtraj ARGV``; assert exit 2 and one ``geomtraj: error:`` line holding ``expected``.

    Returns the error line. argparse usage errors (``SystemExit``) count like any other.
    """
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (argv, err)
    assert len(err.splitlines()) == 1 and err.startswith("geomtraj: error:"), err
    assert "Traceback" not in captured.out + captured.err and "internal error" not in err, err
    assert expected in err, err
    return err
