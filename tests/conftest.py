import logging
import os
import subprocess

import pytest

from tests.keyrecipes import PASSWORD, Gpg, Recipe, sq_password_recipe, sq_recipe, sqop_recipe

pytest_plugins = ["tests.conftest_s3"]


@pytest.fixture(scope="session")
def gpg(tmp_path_factory):
    g = Gpg(tmp_path_factory.mktemp("gpg") / "home")
    yield g
    subprocess.run(["gpgconf", "--kill", "all"], env=g.env, capture_output=True)


@pytest.fixture(scope="session")
def recipes(tmp_path_factory, gpg) -> dict[str, Recipe]:
    d = tmp_path_factory.mktemp("keys")
    r = {
        "sq": sq_recipe(d, "sq", "cv25519"),
        "sq_rsa": sq_recipe(d, "sq_rsa", "rsa3k"),
        "sqop": sqop_recipe(d, "sqop"),
        "sqop_binary": sqop_recipe(d, "sqop_binary", "--no-armor"),
        "sqop_pw": sqop_recipe(d, "sqop_pw", password=PASSWORD),
        "gpg": gpg.export(d, "gpg", gpg.new_key("Bob <b@example.org>", "ed25519", "cv25519")),
        "gpg_rsa": gpg.export(d, "gpg_rsa", gpg.new_key("Rsa <r@example.org>", "rsa2048", "rsa2048")),
        "gpg_pw": gpg.export(
            d, "gpg_pw", gpg.new_key("Pat <p@example.org>", "ed25519", "cv25519", PASSWORD), PASSWORD
        ),
    }
    r["sq_pw"] = sq_password_recipe(d)
    for recipe in r.values():      # as a careful user keeps them (world-readable ones warn)
        recipe.key.chmod(0o600)
    return r


def pytest_configure(config):
    # Files the tests make (secret keys among them) are private, as on a careful
    # user's machine: a world-readable secret key is warned about.
    os.umask(0o077)
    config.addinivalue_line("markers", "expect_log: the test expects warnings or errors "
                                       "in the log (they do not fail it)")


@pytest.fixture(autouse=True)
def no_unexpected_log(request, caplog):
    """A test that logs an unexpected warning, error or traceback fails."""
    yield
    if request.node.get_closest_marker("expect_log"):
        return
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.WARNING]
    assert not bad, "unexpected log: " + "; ".join(r.getMessage() for r in bad)
