"""What a test does when a part it needs is missing: skip, or fail under ``make test``.

The differential references (the `lipsync` and `syncnet-python` packages), Playwright and
Chromium are installed by ``make setup-dev``. A bare ``pytest`` on a machine without them
skips the tests that need them; ``make test`` sets ``LIPSYNC_REQUIRE_REFERENCES=1`` so that a
broken install fails those tests instead of quietly turning them into skips. Parts that may
legitimately be absent (the real media folder, an NVIDIA GPU) keep plain skips.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_ENV = "LIPSYNC_REQUIRE_REFERENCES"


def required() -> bool:
    """True where ``$LIPSYNC_REQUIRE_REFERENCES`` is set to anything but "" or "0"."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def skip_or_fail(reason: str) -> NoReturn:
    """pytest.fail(reason) under ``make test`` ($LIPSYNC_REQUIRE_REFERENCES set), else pytest.skip."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set: `make test` needs it installed; run `make setup-dev`)",
                    pytrace=False)
    pytest.skip(reason)


def shared_folder(env: str, default: Path, marker: str, what: str) -> Path:
    """``$env``, else ``default``: a folder of ../shared, which a machine may lack. A plain skip
    (under ``make test`` too) naming where it looked when ``marker`` is not a file in it."""
    d = Path(os.environ.get(env, default))
    if not (d / marker).is_file():
        pytest.skip(f"{what} not found at {d} (set {env})")
    return d
