"""Disaster recovery with no cryophile: the fragments are one standard OpenPGP message.

    cat chunk.1 … chunk.N | gpg --decrypt | lz4 -d     (or zstd -d, or nothing)
    cat chunk.1 … chunk.N | sq decrypt --recipient-key KEY | lz4 -d
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.clirig import archive_dir, make_rig, message
from tests.test_cli_roundtrip import mixed

DECOMPRESS = {"none": None, "lz4": ["lz4", "-d", "-c"], "zstd": ["zstd", "-d", "-c"]}


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def sh(cmd, data: bytes, env=None) -> bytes:
    proc = subprocess.run(cmd, input=data, capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


def uncompress(codec: str, data: bytes) -> bytes:
    return data if DECOMPRESS[codec] is None else sh(DECOMPRESS[codec], data)


def gpg_decrypt(gpg, data: bytes) -> bytes:
    return sh(["gpg", "--batch", "--quiet", "--decrypt"], data, env=gpg.env)


def sq_decrypt(key, data: bytes) -> bytes:
    return sh(["sq", "decrypt", "--recipient-key", str(key)], data)


@pytest.fixture(scope="module")
def archives(tmp_path_factory, recipes):
    """One archive per compression, to the gpg and the sq recipe, frozen into the vault."""
    rig = make_rig(tmp_path_factory.mktemp("interop"))
    data = mixed(3 << 20, 21) + b"the end\n"
    made = {}
    for codec in DECOMPRESS:
        for who in ("gpg", "sq"):
            made[codec, who] = rig.backup(data, recipes[who].cert, "-C", codec, "-s", "256KiB")
    made["empty", "gpg"] = rig.backup(b"", recipes["gpg"].cert, "-C", "lz4", "--allow-empty")
    rig.run("freeze", "--once", check=True)
    return rig, data, made


@pytest.mark.parametrize("codec", list(DECOMPRESS))
def test_gpg_decrypt(archives, gpg, codec):
    rig, data, made = archives
    msg = message(archive_dir(rig, made[codec, "gpg"]))
    assert uncompress(codec, gpg_decrypt(gpg, msg)) == data


@pytest.mark.parametrize("codec", list(DECOMPRESS))
def test_sq_decrypt(archives, recipes, codec):
    rig, data, made = archives
    msg = message(archive_dir(rig, made[codec, "sq"]))
    assert uncompress(codec, sq_decrypt(recipes["sq"].key, msg)) == data


def test_empty_input_decrypts(archives, gpg):
    rig, _, made = archives
    msg = message(archive_dir(rig, made["empty", "gpg"]))
    assert uncompress("lz4", gpg_decrypt(gpg, msg)) == b""


def test_shell_pipeline_as_documented(archives, recipes):
    """The recipe exactly as a user types it, in a shell, from the vault directory."""
    rig, data, made = archives
    d = archive_dir(rig, made["zstd", "sq"])
    n = len(list(d.glob("chunk.*"))) - 1
    script = (f'cd {d} && for i in $(seq 1 {n}); do cat chunk.$i; done '
              f'| sq decrypt --recipient-key {recipes["sq"].key} | zstd -d')
    out = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_two_recipients_gpg_and_sq(rig, recipes, gpg):
    data = mixed(200000, 22)
    ulid = rig.backup(data, recipes["gpg"].cert, "-k", str(recipes["sq"].cert), "-s", "16KiB")
    msg = message(archive_dir(rig, ulid, where="freeze"))
    assert uncompress("lz4", gpg_decrypt(gpg, msg)) == data
    assert uncompress("lz4", sq_decrypt(recipes["sq"].key, msg)) == data
    packets = sh(["gpg", "--batch", "--list-packets"], msg, env=gpg.env).decode(errors="replace")
    assert len(re.findall(r":pubkey enc packet:", packets)) == 2


@pytest.mark.parametrize("who", ["gpg", "gpg_rsa"])
def test_packet_structure(rig, recipes, gpg, who):
    """One PKESK per recipient encryption subkey, then one SEIPD v1 with MDC, AES-256,
    holding one binary literal packet; no compression packet."""
    data = mixed(100000, 23)
    ulid = rig.backup(data, recipes[who].cert, "-s", "8KiB", "-C", "none")
    msg = message(archive_dir(rig, ulid, where="freeze"))
    proc = subprocess.run(["gpg", "--batch", "--list-packets", "--show-session-key"],
                          input=msg, capture_output=True, env=gpg.env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    packets = proc.stdout.decode(errors="replace")
    tags = re.findall(r"^# off=\d+ ctb=\w+ tag=(\d+)", packets, re.M)
    assert tags == ["1", "18", "11"], packets
    assert len(re.findall(r"^:pubkey enc packet: version 3", packets, re.M)) == 1
    assert ":encrypted data packet:" in packets
    assert re.search(r"mdc_method: 2", packets), packets
    assert re.search(r"session key: '9:[0-9A-F]{64}'", proc.stderr.decode()), proc.stderr
    assert re.search(r":literal data packet:\n\s+mode b", packets), packets
    assert ":compressed packet:" not in packets


def test_partial_body_lengths(archives, gpg):
    """A message over 1 MiB uses partial body lengths (and still decrypts: see above)."""
    rig, data, made = archives
    msg = message(archive_dir(rig, made["none", "gpg"]))
    proc = subprocess.run(["gpg", "--batch", "--list-packets"], input=msg, capture_output=True,
                          env=gpg.env, timeout=60)
    packets = proc.stdout.decode(errors="replace")
    assert re.search(r"tag=18 hlen=\d+ plen=0 partial new-ctb", packets) or \
        re.search(r"tag=18.*partial", packets), packets
    assert ":compressed packet:" not in packets
