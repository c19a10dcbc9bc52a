"""What users install: the sdist and the wheel, built here, and the wheel
installed into a throwaway virtualenv: commands, man pages, shell completions
and the systemd units shipped with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# not part of a source tree: made by tools, tests and setup
UNTRACKED = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "demo", "*.egg-info",
                                   "__pycache__", ".hypothesis", ".pytest_cache", "*.py[cod]")
UNITS = ["cryophile-freeze.service", "cryophile-thaw.service", "cryophilefs@.service",
         "cryophile-zfs-backup@.service", "cryophile-zfs-backup@.timer",
         "cryophile-status.service", "cryophile-status.timer"]
MAN = ["man1/cryophile.1", "man5/cryophile.toml.5", "man8/cryophilefs.8"]
COMPLETIONS = ["bash-completion/completions/cryophile", "bash-completion/completions/cryophilefs",
               "zsh/site-functions/_cryophile", "zsh/site-functions/_cryophilefs",
               "fish/vendor_completions.d/cryophile.fish",
               "fish/vendor_completions.d/cryophilefs.fish"]
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def run(cmd, timeout=300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel), the wheel built from the sdist as `python -m build` does,
    from a copy of the source tree (a build writes into its tree)."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=UNTRACKED, symlinks=True)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "out"), str(src)],
        timeout=600)
    (sdist,), (wheel,) = (tmp / "out").glob("*.tar.gz"), (tmp / "out").glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def unpacked_sdist(dist, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("sdist")
    with tarfile.open(dist[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(where, filter="data")
        else:                   # an older 3.11 (the archive is our own)
            tar.extractall(where)
    (top,) = where.iterdir()
    return top


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A virtualenv with the wheel installed (no dependencies: those of this
    interpreter are made visible to it, so that nothing is downloaded)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         str(dist[1])])
    purelib = run([str(venv / "bin" / "python"), "-c",
                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "deps-of-the-tests.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def in_venv(venv: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "MANWIDTH": "80"}


# --- the sdist ---------------------------------------------------------------------------

def test_sdist_holds_every_file_of_the_source_tree(dist, tmp_path):
    with tarfile.open(dist[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    shutil.copytree(ROOT, tmp_path / "tree", ignore=UNTRACKED, symlinks=True)
    tree = {str(p.relative_to(tmp_path / "tree")) for p in (tmp_path / "tree").rglob("*")
            if p.is_file()}
    missing = sorted(tree - names)
    assert not missing, f"missing from the sdist: {missing}"


@pytest.mark.timeout(600)
def test_the_test_suite_loads_from_the_unpacked_sdist(unpacked_sdist):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked_sdist, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modules = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert modules == {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}
    where = run([sys.executable, "-c", "import cryophile, tests.fsrig; print(cryophile.__file__)"],
                cwd=unpacked_sdist).stdout
    assert where.startswith(str(unpacked_sdist)), where


# --- the wheel ---------------------------------------------------------------------------

def test_wheel_metadata(dist):
    with zipfile.ZipFile(dist[1]) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        text = whl.read(meta).decode()
    assert "License-Expression: Apache-2.0 OR MIT" in text
    assert 'Requires-Dist: standard-imghdr>=3.13; python_version >= "3.13"' in text
    assert "Classifier: Programming Language :: Python :: 3.13" in text


def test_wheel_installs_man_pages_completions_and_units(venv):
    share = venv / "share"
    for name in ([f"man/{m}" for m in MAN] + COMPLETIONS
                 + [f"cryophile/systemd/{u}" for u in UNITS]):
        assert (share / name).is_file(), name
    assert os.access(share / "cryophile" / "cryophile-zfs-backup", os.X_OK)


def test_installed_commands_run(venv):
    for cmd in ("cryophile", "cryophilefs"):
        out = run([str(venv / "bin" / cmd), "--version"], env=in_venv(venv)).stdout
        assert out.startswith(f"{cmd} "), out


@pytest.mark.parametrize("page", ["cryophile", "cryophilefs", "cryophile.toml"])
def test_man_finds_the_pages_of_a_virtualenv_on_path(venv, page):
    """man(1) looks in PREFIX/share/man for every PREFIX/bin on PATH."""
    env = {k: v for k, v in in_venv(venv).items() if k != "MANPATH"}
    where = run(["man", "-w", page], env=env).stdout.strip()
    assert where.startswith(str(venv / "share" / "man")), where
    assert "NAME" in run(["man", page], env=env).stdout


def test_the_readme_install_recipe_links_commands_pages_and_completions(venv, tmp_path):
    readme = (ROOT / "README.md").read_text()
    recipe = readme[readme.index("    cd /opt/cryophile && for f in"):]
    recipe = recipe[:recipe.index("done") + len("done")]
    local = tmp_path / "usr-local"
    recipe = recipe.replace("/opt/cryophile", str(venv)).replace("/usr/local", str(local))
    run(["bash", "-c", recipe])
    assert run([str(local / "bin" / "cryophile"), "--version"]).stdout.startswith("cryophile ")
    for page in ("cryophile", "cryophilefs", "cryophile.toml"):
        run(["man", "-M", str(local / "share" / "man"), "-w", page])
    for name in COMPLETIONS:
        assert (local / "share" / name).resolve() == (venv / "share" / name), name


# --- completions -------------------------------------------------------------------------

def test_print_completion_bash():
    script = run([sys.executable, "-m", "cryophile", "--print-completion", "bash"]).stdout
    proc = run(["bash", "-c", 'source /dev/stdin; complete -p cryophile'], input=script)
    assert "-F _shtab_cryophile cryophile" in proc.stdout


def _bash_complete(venv: Path, line: str, loader: str) -> list[str]:
    """What TAB offers after ``line`` once ``loader`` ran in a fresh bash."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    script = f"""{loader}
        COMP_WORDS=({' '.join(f'"{w}"' for w in words)}); COMP_CWORD={len(words) - 1}
        COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}
        $(complete -p {words[0]} | sed -E 's/.* -F ([^ ]+) .*/\\1/') {words[0]} "{words[-1]}" "{words[-2]}"
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    return run(["bash", "-c", script], env=in_venv(venv)).stdout.split()


@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="needs Debian's bash-completion")
def test_bash_completes_commands_and_options_from_the_installed_loader(venv):
    # bash-completion finds PREFIX/share/bash-completion/completions/cryophile
    # through XDG_DATA_DIRS (for /usr/local it does without)
    loader = (f"export XDG_DATA_DIRS={venv / 'share'}; source {BASH_COMPLETION}; "
              "__load_completion cryophile; __load_completion cryophilefs")
    assert _bash_complete(venv, "cryophile fr", loader) == ["freeze"]
    assert _bash_complete(venv, "cryophile backup --na", loader) == ["--name"]
    assert "--foreground" in _bash_complete(venv, "cryophilefs --f", loader)


@pytest.mark.skipif(not shutil.which("fish"), reason="needs fish")
def test_fish_completes_from_the_installed_loader(venv):
    fish = f"set -p fish_complete_path {venv}/share/fish/vendor_completions.d; complete -C"
    out = run(["fish", "-c", f"{fish} 'cryophile fr'"], env=in_venv(venv)).stdout
    assert out.split("\t")[0] == "freeze", out
    out = run(["fish", "-c", f"{fish} 'cryophilefs --fo'"], env=in_venv(venv)).stdout
    assert out.split("\t")[0] == "--foreground", out


@pytest.mark.skipif(not shutil.which("zsh"), reason="needs zsh")
def test_zsh_registers_the_installed_loader(venv):
    script = (f"fpath=({venv}/share/zsh/site-functions $fpath); autoload -U compinit; "
              "compinit -u -D; print ${_comps[cryophile]} ${_comps[cryophilefs]}; "
              # what the loader does when first called
              'eval "$(cryophile --print-completion zsh)"; print ${_comps[cryophile]}')
    out = run(["zsh", "-f", "-c", script], env=in_venv(venv)).stdout.split()
    assert out == ["_cryophile", "_cryophilefs", "_shtab_cryophile"], out


# --- systemd units -----------------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_analyze_verifies_the_installed_units(venv, tmp_path):
    """The units as installed, with their /usr/local/bin paths pointed at the
    virtualenv (where the README's symlinks put them)."""
    share = venv / "share" / "cryophile"
    for unit in UNITS:
        text = (share / "systemd" / unit).read_text()
        text = text.replace("/usr/local/bin/cryophile-zfs-backup", str(share / "cryophile-zfs-backup"))
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/", f"{venv / 'bin'}/"))
    proc = subprocess.run(["systemd-analyze", "verify", *UNITS], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env={**in_venv(venv), "MANPATH": str(venv / "share" / "man")})
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_zfs_backup_script_parses_and_wants_a_dataset(venv):
    script = str(venv / "share" / "cryophile" / "cryophile-zfs-backup")
    run(["bash", "-n", script])
    proc = subprocess.run([script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr
