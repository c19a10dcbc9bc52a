"""Every directory cryophile makes in the spool is 0700: the root, vault and
prefix directories included, whatever the umask."""

from __future__ import annotations

import os
import stat

from tests.clirig import make_rig


def test_spool_directories_are_private(tmp_path, recipes):
    rig = make_rig(tmp_path)
    old = os.umask(0o022)
    try:
        rig.backup(b"x", recipes["sq"].cert, "-p", "tank/home/daily")
    finally:
        os.umask(old)
    made = [rig.spool, *[p for p in rig.spool.rglob("*") if p.is_dir()]]
    assert rig.spool / "freeze" / rig.vault / "tank" / "home" in made
    modes = {str(p.relative_to(rig.root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in made}
    assert set(modes.values()) == {"0o700"}, modes
