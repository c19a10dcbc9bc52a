"""The README's quick start runs: scripts/demo backs up, freezes, restores,
recovers with standard tools, and mounts, all on a local vault."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_names_the_two_commands():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"^    (\S.*)$", text.split("## Quick start", 1)[1].split("##", 1)[0],
                          re.M)
    assert commands == ["scripts/demo", ".ci/run"]
    assert ".venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_demo_runs(tmp_path):
    # .ci/run has run scripts/setup already; the demo's own work is what is tested
    # and it writes only into this test's directory, not the checkout's ./demo
    env = {**os.environ, "CRYOPHILE_DEMO_NO_SETUP": "1", "CRYOPHILE_VENV": sys.prefix,
           "CRYOPHILE_DEMO_DIR": str(tmp_path / "demo")}
    proc = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, env=env,
                          timeout=900, cwd=ROOT)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    assert "restored byte for byte" in out
    assert "sq + lz4 give back the same bytes" in out
    assert 'user.cryophile.name="usr-share.tar"' in out
    assert "read back through the mount, byte for byte, after a remount" in out
    assert (tmp_path / "demo" / "cryophile.toml").exists()
    # the demo keeps its own secret key private, so nothing warns about it
    err = proc.stderr.decode(errors="replace")
    assert "warning" not in err, err
    assert (tmp_path / "demo" / "key.pgp").stat().st_mode & 0o077 == 0
    assert f"rm -rf {tmp_path / 'demo'}" in out
