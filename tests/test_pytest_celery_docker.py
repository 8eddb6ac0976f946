"""pytest-celery's Docker-based smoke test: runs only where a Docker engine answers.

The main suite runs real ``celery worker`` processes itself (see conftest.py);
pytest-celery's own ``celery_setup`` fixtures start Redis and workers in
containers, which needs an engine this CI machine does not have.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _docker_engine_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _docker_engine_runs(), reason="pytest-celery's Docker fixtures need a Docker engine"
)


def test_pytest_celery_setup_is_ready(celery_setup: object) -> None:
    assert celery_setup.ready()  # type: ignore[attr-defined]
