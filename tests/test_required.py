"""tests/required.py: a missing reference part skips under bare pytest and fails under
``make test`` (which sets LIPSYNC_REQUIRE_REFERENCES=1)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from required import REQUIRE_ENV, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
REASON = "the `example` package is not installed"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_variable_a_missing_part_skips(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.skip.Exception) as info:
        skip_or_fail(REASON)
    assert str(info.value) == REASON


@pytest.mark.parametrize("value", ["1", "yes"])
def test_with_the_variable_a_missing_part_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception) as info:
        skip_or_fail(REASON)
    assert str(info.value).startswith(REASON) and REQUIRE_ENV in str(info.value)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_test_sets_the_variable() -> None:
    """``make -n test`` prints (does not run) the commands: the pytest line carries the variable."""
    proc = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pytest_lines = [line for line in proc.stdout.splitlines() if "-m pytest" in line]
    assert len(pytest_lines) == 1 and f"{REQUIRE_ENV}=1 " in pytest_lines[0], proc.stdout
