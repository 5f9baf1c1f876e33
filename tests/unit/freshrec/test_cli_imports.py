"""What the CLI loads before a command runs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pyflink", "river", "scipy", "torch")


def test_the_parser_of_every_command_loads_no_heavy_library() -> None:
    # `freshrec --help`, `tail` or `kafka up` should start at once: River and SciPy (~1 s),
    # torch and PyFlink load only in the commands that use them.
    check = ("import sys, freshrec.cli; freshrec.cli.build_parser(); "
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"the CLI's parser imported {out}"
