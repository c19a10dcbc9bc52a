"""Layers point down: the filesystem never imports the command line."""

import subprocess
import sys


def test_cryophilefs_does_not_import_the_command_line():
    code = ("import sys, cryophilefs.mount; "
            "print(sorted(m for m in sys.modules if m.startswith('cryophile.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
