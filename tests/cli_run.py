"""Run the ``tft2v`` CLI in-process, the way a shell would see it."""

import pytest

from tft2v.cli import main


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``tft2v *argv``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
