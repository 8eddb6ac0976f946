"""The chaos suite, small: every fault once (a backlog past the envelope lifetime and a
worker with a skewed clock among them), every hand-made bad input, 200 generated ones.

Bad inputs go to every task's queue and, as final job announcements on
``events:jobs``, to the coordinator's view (20 generated EVENTs among them).

``make chaos`` runs the full suite (1,000+ jobs, 1,000 generated envelopes). This
one runs the same code on its own redis-server in a temporary folder (it kills
that Redis, so it cannot share the session's), with its own settings and keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.chaos.chaos import run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.timeout(280)]

EVERY_FAULT_ONCE = dict.fromkeys(
    (
        "worker_kills",
        "worker_stops",
        "distributor_kills",
        "redis_restarts",
        "redis_fulls",
        "backlogs",
        "bursts",
    ),
    1,
)


def test_faults_and_bad_inputs_lose_nothing_and_run_nothing(tmp_path: Path) -> None:
    report = run_chaos(
        200,
        hypothesis_inputs=200,
        burst_size=40,
        rate_per_s=5.0,
        seed=11,
        workdir=tmp_path / "chaos",
        **EVERY_FAULT_ONCE,
    )
    print(json.dumps(report, indent=1, default=str))
    assert report["submitted"] >= 200
    assert report["lost"] == 0, report["lost_ids"]
    assert report["duplicate_results"] == 0, report["duplicate_ids"]
    assert report["completed"] == report["submitted"], report["failed"]
    assert report["bad_inputs_ran"] == 0, report["changed_targets"]
    assert report["bad_inputs_tried"] >= 200 + 100
    assert report["bad_inputs_refused"] == report["bad_inputs_tried"]
    assert report["bad_announcements_tried"] >= 20 + 15
    assert report["bad_announcements_refused"] == report["bad_announcements_tried"]
    assert report["bad_announcements_believed_by_view"] == 0
    assert report["announcement_replay_believed_by_view"] is not None
    assert report["handler_executions"] == report["handler_executions_explained"]
    # The clock-skew worker runs where libfaketime works; elsewhere the run says why not.
    skewed = "clock_skew" not in report["skipped_faults"]
    assert report["faults"] == {
        "worker_kill": 1,
        "distributor_kill": 1,
        "worker_stop": 1,
        "redis_restart": 1,
        "redis_full": 1,
        "backlog": 1,
        "burst": 1,
        **({"clock_skew": 1} if skewed else {}),
    }
    by_kind = {fault["kind"]: fault for fault in report["fault_log"]}
    backlog = by_kind["backlog"]
    assert backlog["envelopes_readmitted"] > 0, backlog
    assert backlog["all_done_after_s"] is not None, backlog
    # One attempt each, but for jobs the health check re-sent (see Cluster.backlog).
    more = sum(n for attempts, n in backlog["attempts"].items() if attempts != "1")
    assert more <= backlog["resent_by_health_check"], backlog
    if skewed:
        skew = by_kind["clock_skew"]
        assert skew["marked_dead"] == 0, skew
        assert skew["jobs_completed"] > 0, skew
        assert skew["refused_expired"] == 0, skew
    assert report["max_recovery_s"] is not None and None not in report["recoveries_s"]
    assert report["late_results_ignored"] >= report["late_results_expected"]
    assert not report["unexpected_exits"]
    assert not report["bad_inputs_unexpected_reasons"]
    assert report["ok"], report["problems"]
