"""The claim contract, on both backends (file and Redis): atomic, leased, renewable, token-fenced, counted,
dead-lettered, with every transition in the event log."""

from __future__ import annotations

import time

import pytest
from conftest import make_queue, write_task

from hypervisor.claims import views
from hypervisor.core.config import Config
from hypervisor.core.errors import ClaimRefused, NothingToClaim, UsageError
from hypervisor.frontends.mcp_server import dispatch_update
from hypervisor.tasks import taskfile


@pytest.fixture
def queue(root, backend):
    return make_queue(root, backend)


def events(queue):
    return queue.events()


def fields(path):
    return taskfile.read_doc(str(path)).data


def test_claim_is_exclusive_and_complete_needs_the_token(root, queue):
    path = write_task(root, "a", status="active", custom="kept")
    claim = queue.claim_next("w1")
    assert claim["id"] == "a" and claim["attempts"] == 1 and len(claim["claim_token"]) == 32
    assert fields(path)["status"] == "in_progress" and fields(path)["assignee"] == "w1"
    with pytest.raises(NothingToClaim):
        queue.claim_next("w2")
    with pytest.raises(ClaimRefused, match="already claimed by w1"):
        queue.claim_next("w2", task_id="a")
    with pytest.raises(ClaimRefused, match="does not match the live claim"):
        queue.complete("a", token="0" * 32, summary="nope")
    with pytest.raises(ClaimRefused, match="claimed by w1, not by w2"):
        queue.complete("a", caller="w2", summary="nope")
    queue.complete("a", token=claim["claim_token"], summary="did it", commit="abc1234")
    data = fields(path)
    assert data["status"] == "done" and data["commit"] == "abc1234" and data["custom"] == "kept"
    assert "## Worker log" in path.read_text() and "did it" in path.read_text()
    assert [e["event"] for e in events(queue)] == ["claimed", "completed"]


def test_queue_order_is_priority_then_created_then_id(root, queue):
    write_task(root, "late", priority=1, created="2026-02-01")
    write_task(root, "early", priority=1, created="2026-01-01")
    write_task(root, "urgent", priority=0)
    write_task(root, "b-nodate", priority=1)
    write_task(root, "a-nodate", priority=1)
    write_task(root, "low", priority=4, created="2020-01-01")
    assert [t["id"] for t in queue.ready()] == ["urgent", "early", "late", "a-nodate", "b-nodate", "low"]
    assert [queue.claim_next("w")["id"] for _ in range(6)] == ["urgent", "early", "late", "a-nodate", "b-nodate", "low"]


def test_dependencies_gate_the_queue_and_a_missing_one_blocks(root, queue):
    write_task(root, "base", status="active")
    write_task(root, "next", depends_on=["base"])
    write_task(root, "linked", depends_on="[[base]]")
    write_task(root, "orphan", depends_on=["does-not-exist"])
    write_task(root, "after-cancel", depends_on=["gone"])
    write_task(root, "gone", status="cancelled")
    assert {t["id"] for t in queue.ready()} == {"base", "after-cancel"}
    with pytest.raises(ClaimRefused, match=r"does-not-exist \(missing\)"):
        queue.claim_next("w", task_id="orphan")
    claim = queue.claim_next("w", task_id="base")
    queue.complete("base", token=claim["claim_token"], summary="ok")
    assert {t["id"] for t in queue.ready()} == {"next", "linked", "after-cancel"}


def test_expired_lease_is_taken_over_once_and_the_stale_holder_is_told(root, queue):
    path = write_task(root, "a", status="active")
    first = queue.claim_next("w1", lease_seconds=0.3)
    time.sleep(0.4)
    second = queue.claim_next("w3")
    assert second["id"] == "a" and second["attempts"] == 2
    assert fields(path)["attempts"] == 2 and fields(path)["assignee"] == "w3"
    with pytest.raises(ClaimRefused, match=r"claim lost: lease expired .* ago, now held by w3"):
        queue.complete("a", token=first["claim_token"], summary="late")
    with pytest.raises(ClaimRefused, match="claim lost"):
        queue.renew("a", token=first["claim_token"])
    assert [e["event"] for e in events(queue)] == ["claimed", "taken_over"]


def test_renew_extends_the_lease(root, queue):
    write_task(root, "a")
    claim = queue.claim_next("w1", lease_seconds=0.5)
    renewed = queue.renew("a", token=claim["claim_token"], lease_seconds=60)
    assert renewed["lease_expires_at"] > claim["lease_expires_at"]
    time.sleep(0.6)
    with pytest.raises(NothingToClaim):
        queue.claim_next("w2")


def test_release_restores_status_and_assignee_and_keeps_the_attempt(root, queue):
    path = write_task(root, "a", status="inbox", assignee="human")
    claim = queue.claim_next("w1")
    queue.release("a", token=claim["claim_token"], reason="gave up")
    data = fields(path)
    assert data["status"] == "inbox" and data["assignee"] == "human" and data["attempts"] == 1
    assert queue.claim_next("w2")["attempts"] == 2


def test_dead_letter_after_max_attempts(root, backend):
    queue = make_queue(root, backend, Config(max_attempts=2))
    path = write_task(root, "a", status="active")
    for caller in ("w1", "w2"):
        claim = queue.claim_next(caller)
        queue.release("a", token=claim["claim_token"])
    with pytest.raises(NothingToClaim):
        queue.claim_next("w3")
    data = fields(path)
    assert data["status"] == "blocked" and data["blocked_reason"] == "max_attempts" and data["attempts"] == 2
    assert events(queue)[-1]["event"] == "dead_letter"


def test_block_records_the_reason(root, queue):
    path = write_task(root, "a")
    claim = queue.claim_next("w1")
    with pytest.raises(UsageError):
        queue.block("a", token=claim["claim_token"], reason="  ")
    queue.block("a", token=claim["claim_token"], reason="needs the API key")
    data = fields(path)
    assert data["status"] == "blocked" and data["blocked_reason"] == "needs the API key"
    with pytest.raises(ClaimRefused, match="no claim holds it"):
        queue.complete("a", token=claim["claim_token"], summary="x")


def test_hand_set_in_progress_is_not_claimable(root, queue):
    write_task(root, "a", status="in_progress", assignee="someone")
    with pytest.raises(ClaimRefused, match="set in_progress by hand"):
        queue.claim_next("w", task_id="a")


def test_stats_and_preflight(root, queue):
    write_task(root, "done1", status="done")
    write_task(root, "cx", status="cancelled")
    write_task(root, "dep", depends_on=["open"])
    write_task(root, "open", status="active")
    write_task(root, "taken")
    queue.claim_next("w", task_id="taken")
    pre = views.preflight(queue)
    assert pre["ready"] == ["open"]
    assert pre["skipped"]["done"] == ["done1"] and pre["skipped"]["cancelled"] == ["cx"]
    assert pre["skipped"]["claimed"][0]["id"] == "taken"
    assert pre["skipped"]["blocked_deps"] == [{"id": "dep", "waiting_on": ["open (active)"]}]
    stats = views.stats(queue, by_project=True)
    assert stats["total"] == 5 and stats["claimed"] == 1 and stats["ready"] == 1
    assert stats["by_status"]["in_progress"] == 1


def test_a_lease_that_ran_out_but_was_not_taken_over_is_renewed_the_token_is_the_fence(root, queue):
    write_task(root, "a")
    claim = queue.claim_next("w1", lease_seconds=0.3)
    time.sleep(0.4)
    assert [t["id"] for t in queue.ready()] == ["a"]
    queue.renew("a", token=claim["claim_token"], lease_seconds=60)
    with pytest.raises(NothingToClaim):
        queue.claim_next("w2")
    queue.complete("a", token=claim["claim_token"], summary="finished after all")
    assert [e["event"] for e in events(queue)] == ["claimed", "renewed", "completed"]


def test_the_holder_cancelling_its_task_ends_the_claim(root, queue):
    path = write_task(root, "a", status="active")
    claim = queue.claim_next("w1")
    dispatch_update(queue, "a", token=claim["claim_token"], status="cancelled", note="not needed")
    assert fields(path)["status"] == "cancelled" and queue.read_claim("a") is None
    assert queue.live_claims() == {} and queue.claim_records() == {}
    with pytest.raises(ClaimRefused, match="no claim holds it"):
        queue.renew("a", token=claim["claim_token"])


def test_the_event_log_reads_from_a_cursor(root, queue):
    write_task(root, "a")
    write_task(root, "b")
    queue.claim_next("w1", task_id="a")
    cursor = queue.events_cursor()
    queue.claim_next("w2", task_id="b")
    assert [(e["event"], e["task"]) for e in queue.events(cursor)] == [("claimed", "b")]
    assert [e["task"] for e in queue.events()] == ["a", "b"]
    assert queue.events(queue.events_cursor()) == []


def test_a_claim_whose_record_landed_but_whose_folder_sync_failed_leaves_no_claim(root, monkeypatch):
    """The claim record is renamed into place, then its folder's fsync fails (as on a nearly full disk): the claim
    fails with the error, and no record is left holding a token nobody was given; the task can be claimed at once."""
    import errno
    import os

    from hypervisor.core import fsutil

    write_task(root, "t1", title="One", status="active")
    queue = make_queue(root)
    synced = fsutil._fsync_dir

    def failing(directory: str) -> None:
        if os.path.basename(directory) == "claims":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        synced(directory)

    monkeypatch.setattr(fsutil, "_fsync_dir", failing)
    with pytest.raises(OSError) as failed:
        queue.claim_next("w1")
    assert failed.value.errno == errno.ENOSPC
    assert queue.claim_records() == {}
    assert fields(root / "t1.md")["status"] == "active"
    monkeypatch.setattr(fsutil, "_fsync_dir", synced)
    assert queue.claim_next("w2")["id"] == "t1"
