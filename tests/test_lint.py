"""Static checks: the same ones a reviewer runs."""

from __future__ import annotations

import pytest

from conftest import BIN, run

pytestmark = pytest.mark.lint


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "ansible-lint"), "--nocolor"],
        [str(BIN / "yamllint"), "--strict", "."],
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "mypy")],
        [str(BIN / "ansible-playbook"), "-i", "inventory/local", "site.yml", "--syntax-check"],
        [str(BIN / "ansible-playbook"), "-i", "inventory/multi-host", "site.yml", "--syntax-check"],
    ],
    ids=["ansible-lint", "yamllint", "ruff", "mypy", "syntax-local", "syntax-multi-host"],
)
def test_static_check_passes(command: list[str]) -> None:
    result = run(command, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
