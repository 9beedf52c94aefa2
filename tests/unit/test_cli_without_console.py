"""The gateway's own image has no web console: every command still works, and `ui` says why not."""

from __future__ import annotations

import sys

import pytest

from gateway.cli import main


def test_without_the_console_package_the_cli_works_and_ui_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "frontend.cli", None)  # import frontend.cli -> ImportError
    assert main(["ui"]) == 2
    assert "the web console is not installed here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as shown:
        main(["policy", "--help"])
    assert shown.value.code == 0
