"""``make demo`` end to end: the workload and the agent jobs, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_the_demo_runs_its_workload_and_steers_its_agents() -> None:
    # As `make demo` runs it: none of the test session's settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTS_")}
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [sys.executable, "-m", "project", "demo", "--jobs", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: 30/30 jobs completed; 4/4 agent jobs ended as expected" in done.stdout
    for text in ("agent jobs (assistant", "approved", "declined", "CANCELED", "JobCanceledError"):
        assert text in done.stdout, done.stdout
    assert "Declined: the reviewer did not approve this answer. Ask finance." in done.stdout
