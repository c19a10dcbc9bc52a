"""Names printed on a terminal: escaped, one line each, and still telling apart."""

from __future__ import annotations

import re
import unicodedata

import hypothesis.strategies as st
from hypothesis import given

from cryophile.cli.common import escape
from tests.clirig import make_rig

_ESCAPE = re.compile(r"\\(n|r|t|\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def unescape(text: str) -> str:
    named = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}
    return _ESCAPE.sub(lambda m: named.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), text)


@given(st.text())
def test_escaped_text_is_inert_and_reversible(text):
    shown = escape(text)
    assert all(unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
               for c in shown)
    assert len(shown.splitlines()) <= 1
    assert unescape(shown) == text


def test_plain_names_stay_as_they_are():
    assert escape("tank/home@monday – été 2026 ✓") == "tank/home@monday – été 2026 ✓"


def test_ls_shows_hostile_names_on_one_line(tmp_path, recipes):
    rig = make_rig(tmp_path)
    hostile = "x\x1b]0;pwned\x07\x1b[2J\nfake-archive 2026-01-01 1 B 1 stored\u202egnp.exe"
    rig.backup(b"x", recipes["sq"].cert, "--name", hostile)
    out = rig.run("ls", "-k", str(recipes["sq"].key), rig.vault, check=True).stdout.decode()
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert lines[1].endswith(escape(hostile))
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\nfake-archive" in lines[1] and "\\u202egnp.exe" in lines[1]
