"""create_body finds the seccomp profiles as package data of `seccomp`, by profile name only."""

from __future__ import annotations

from pathlib import Path

import pytest

import seccomp
from gateway.backend.create_body import SECCOMP_DIR, _seccomp_option, seccomp_options, seccomp_profile_names
from gateway.errors import ConfigError

TREE = Path(__file__).resolve().parents[2] / "seccomp"


def test_the_profiles_are_the_json_files_of_the_seccomp_package() -> None:
    assert Path(str(SECCOMP_DIR)) == Path(seccomp.__file__).parent
    assert seccomp_profile_names() == sorted(path.stem for path in TREE.glob("*.json"))
    assert "sandbox" in seccomp_profile_names()
    options = seccomp_options()
    assert options["runc"] == frozenset(_seccomp_option("sandbox", "runc"))
    assert options["runsc"] == frozenset(_seccomp_option("sandbox", "runsc"))


@pytest.mark.parametrize("name", ["missing", "../seccomp/sandbox", "/etc/passwd", "sandbox.json", ""])
def test_a_name_that_is_no_profile_of_the_package_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"not found in .*profiles: .*sandbox"):
        _seccomp_option(name)


def test_the_engine_default_needs_no_file() -> None:
    assert _seccomp_option("default") == []
