"""Bad inputs for ``make chaos``: forged, broken and replayed messages put on queues and channels.

Someone with access to the broker, but not to the A2A keys, can put anything on
any queue and publish anything on any channel. Every bad input built here is
aimed at a *target*: a throwaway job record parked in a state where a message
that got through would change it (an ASSIGNED job at epoch 1, which a work order
would start, a dispatch would re-assign and a result would finish). Targets are
parked outside the open-job indexes, so the health check never touches them: a
target that changed was changed by a bad input.

There are two kinds of destination (:class:`Route`):

* **a task** (each worker's execute, the distributor's assign and complete): each
  input is sent under its own Celery task id. A refused envelope stores its
  typed :class:`~project.core.errors.A2AError` in the result backend under that
  id, so every input is accounted for one by one; the two inputs that Celery
  itself refuses before any task runs (pickle, and a body that is not JSON) are
  counted from the consuming process's log instead.
* **the final announcement** on ``events:jobs``: the job-finish script announces a
  final status there with the signed EVENT inside (field ``event``), and the
  coordinator's view believes it only if that EVENT verifies and names the same
  job and status (:func:`project.coordinator.view.genuine_event_check`). A bad
  announcement (forged or tampered EVENT, none, one for another job or status,
  not JSON, ...) claims that a target was ABANDONED. It has no task id, so the
  announcements go out one at a time, after every input on a queue is accounted
  for: each is refused when the refusal counter (``stats:a2a:refused``) rises,
  by as many as the views that heard it (``PUBLISH``'s reply), for its expected
  reason. Whether a view *believed* one shows in its counts (``metadata["view"]``
  of the coordinator's checkpointed local state; see :mod:`tools.chaos.chaos`): no
  genuine job of a chaos run is ABANDONED. (An announcement that is not JSON at
  all never reaches the view: its subscriber drops it, uncounted, so none is sent;
  "not JSON" here is an EVENT field that is not.)

Hypothesis generates most of the malformed envelopes: a valid, signed envelope
for the destination is mutated (a field removed, retyped or added, the
signature or key id altered, a wrong secret, an expiry in the past, another
recipient or type, truncated text), re-signed with the real key or not. An
example that the destination's own checks would accept is rejected before sending.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from celery import Celery, signature

from project.coordinator.view import VIEW_TASK_NAME
from project.core import errors
from project.core.a2a import Envelope, Keyring, MessageType, Signer, canonical_bytes, now_ms, verify
from project.core.constants import (
    CHANNEL_JOBS,
    COORDINATOR,
    DISTRIBUTOR,
    DISTRIBUTOR_QUEUE,
    KEY_JOB,
    KEY_STATS_REFUSED,
    TASK_ASSIGN,
    TASK_COMPLETE,
    TASK_EXECUTE,
    worker_queue,
)
from project.core.errors import A2AError, LapsedEnvelopeError
from project.core.messages import DispatchRequest, JobEvent, WorkOrder, WorkReport
from project.core.models import JobSpec, JobStatus, Priority, Requirements
from project.core.runtime import Runtime
from project.core.state.jobs import AssignKind, FinishKind

TARGET_PREFIX = "chaos-target-"
CONTROL_PREFIX = "chaos-control-"
RESULT_KEY_PREFIX = "celery-task-meta-"
PAYLOAD: dict[str, Any] = {"operation": "sum", "values": [1, 2, 3]}
FORGED_RESULT: dict[str, Any] = {"operation": "sum", "result": 999}
ATTACKER_SECRET = b"an-attacker-key-that-is-long-enough!!"

# What the consuming process logs when Celery itself refuses a message.
LOG_PICKLE = "Refusing to deserialize untrusted content of type pickle"
LOG_UNDECODABLE = "Can't decode message body"

ANNOUNCED_STATUS = JobStatus.ABANDONED
"""What a bad announcement claims: no genuine job of a chaos run ends so."""
ANNOUNCEMENT_WAIT_S = 3.0
"""How long an announcement's refusal may take to be counted."""

MessageModel = type[DispatchRequest] | type[WorkOrder] | type[WorkReport] | type[JobEvent]
REFUSAL_NAMES: dict[str, str] = {
    cls.reason: cls.__name__
    for cls in vars(errors).values()
    if isinstance(cls, type)
    and issubclass(cls, A2AError)
    and cls is not A2AError
    and "reason" in vars(cls)  # not LapsedEnvelopeError, which counts as "expired" too
}
"""A refusal's counted reason -> the A2AError class that defines it."""

CHAIN_FIELD = "link:"
"""A job's causal chain: the fields ``link:{epoch:06d}:{a|b|c|d}`` of its record."""
PARKED_EPOCH = 1
"""The epoch every target is parked at (ASSIGNED to its destination's worker)."""
EXPIRED_TTL_MS = -3_600_000
"""The TTL of the hand-made expired input: an hour past its expiry, beyond any skew allowance."""


def chain_of(record: dict[str, str]) -> list[str]:
    """A job's causal chain (its link fields, oldest first) from its whole record."""
    return [record[name] for name in sorted(record) if name.startswith(CHAIN_FIELD)]


def refusal_matches(reason: str, expect: str) -> bool:
    """True if a refusal of class ``reason`` is the ``expect`` one (or a kind of it).

    An authentic envelope refused as expired comes back as LapsedEnvelopeError, a
    kind of ExpiredEnvelopeError (see :func:`project.core.hops.readmit`).
    """
    if reason == expect:
        return True
    got, wanted = getattr(errors, reason, None), getattr(errors, expect, None)
    return isinstance(got, type) and isinstance(wanted, type) and issubclass(got, wanted)


class Route(StrEnum):
    """How a bad input reaches its destination."""

    TASK = "task"
    """A Celery task message on the destination's queue."""
    ANNOUNCEMENT = "announcement"
    """A final job announcement published on the destination's channel."""


@dataclass(frozen=True)
class Destination:
    """One task of one tier, or the coordinator's view, that bad inputs are aimed at."""

    name: str
    """Short label, e.g. ``execute@w1``."""
    task: str
    """Celery task name (for the view: the name its refusals are counted under)."""
    queue: str
    """The queue its messages go to (for the view: the channel)."""
    recipient: str
    """Who a genuine envelope for it is addressed to."""
    message_type: MessageType
    """The envelope type it accepts."""
    message: MessageModel
    """The payload model it accepts."""
    services: tuple[str, ...]
    """Deployment services consuming ``queue`` (whose logs show Celery's own refusals)."""
    worker_id: str
    """The worker a target of this destination is assigned to."""
    route: Route = Route.TASK
    """How its inputs are sent."""


def destinations(workers: tuple[str, ...], distributors: tuple[str, ...]) -> list[Destination]:
    """Every task a bad input is aimed at: each worker's execute, assign, complete."""
    found = [
        Destination(
            f"execute@{w}",
            TASK_EXECUTE,
            worker_queue(w),
            w,
            MessageType.REQUEST,
            WorkOrder,
            (w,),
            w,
        )
        for w in workers
    ]
    first = workers[0]
    found += [
        Destination(
            "assign",
            TASK_ASSIGN,
            DISTRIBUTOR_QUEUE,
            DISTRIBUTOR,
            MessageType.REQUEST,
            DispatchRequest,
            distributors,
            first,
        ),
        Destination(
            "complete",
            TASK_COMPLETE,
            DISTRIBUTOR_QUEUE,
            DISTRIBUTOR,
            MessageType.RESPONSE,
            WorkReport,
            distributors,
            first,
        ),
    ]
    return found


def announcement_destination(workers: tuple[str, ...]) -> Destination:
    """The coordinator's view, which believes a final announcement on ``events:jobs``."""
    return Destination(
        "announcement",
        VIEW_TASK_NAME,
        CHANNEL_JOBS,
        COORDINATOR,
        MessageType.EVENT,
        JobEvent,
        ("coordinator",),
        workers[0],
        Route.ANNOUNCEMENT,
    )


@dataclass(frozen=True)
class SentInput:
    """One bad input that was put on a queue or announced on a channel."""

    task_id: str
    """Its Celery task id (for an announcement: an id of its own, for the record)."""
    kind: str
    destination: str
    target: str
    """The job id it was aimed at (a parked target or a replay control)."""
    log_marker: str | None = None
    """Set if Celery refuses it before any task runs: what the consumer logs then."""
    expect: str | None = None
    """The refusal it must meet (an A2AError class name), if one in particular."""
    route: Route = Route.TASK


@dataclass(frozen=True)
class AnnouncementOutcome:
    """What became of one announcement, seen from the refusal counter."""

    receivers: int
    """Subscribers that got it (``PUBLISH``'s reply): the views that must refuse it."""
    counted: dict[str, int]
    """Refusals counted meanwhile, by reason (``stats:a2a:refused`` deltas)."""


@dataclass
class Verdict:
    """How the bad inputs fared."""

    tried: int = 0
    refused: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    refused_by_celery: int = 0
    """Refused by Celery's content checks (pickle, undecodable body), seen in the logs."""
    unexpected_reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    """Kind -> refusal -> count, for inputs refused, but not for the reason they must be."""
    errored: dict[str, int] = field(default_factory=dict)
    """Task failures that were not a typed refusal (exception type -> count)."""
    unaccounted: int = 0
    """Neither refused nor errored: accepted past verification, or never processed."""
    changed_targets: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    hypothesis: int = 0
    announcements: int = 0
    """Of ``tried``: bad final announcements on ``events:jobs``."""
    announcements_refused: int = 0
    """Of ``refused``: announcements the view refused (its refusal counter rose)."""


def _dispatch_request(job_id: str, *, expected_epoch: int, reason: str) -> DispatchRequest:
    """A routing request for one of the chaos run's throwaway compute jobs."""
    return DispatchRequest(
        job_id=job_id,
        task_type="compute",
        payload=PAYLOAD,
        priority=Priority.NORMAL,
        requirements=Requirements(),
        deadline_ms=now_ms() + 600_000,
        expected_epoch=expected_epoch,
        reason=reason,
    )


def _mac(secret: bytes, wire: dict[str, Any]) -> str:
    return hmac.new(secret, canonical_bytes(wire), hashlib.sha256).hexdigest()


def resign(wire: dict[str, Any], keyring: Keyring, key_id: str | None = None) -> dict[str, Any]:
    """Sign ``wire`` again (in place) with a key of ``keyring``, as its holder could."""
    key_id = key_id or keyring.active_key_id
    wire["key_id"] = key_id
    wire["signature"] = _mac(keyring.secret(key_id), wire)
    return wire


def event_text(raw: Any) -> str:
    """The ``event`` field of an announcement carrying ``raw``: text as is, else its JSON."""
    return raw if isinstance(raw, str) else json.dumps(raw)


def accepted_by_tier(
    destination: Destination,
    raw: Any,
    keyring: Keyring,
    max_bytes: int,
    *,
    skew_ms: int,
    announced: tuple[str, str] | None = None,
    waiting: tuple[str, int] | None = None,
) -> bool:
    """True if ``destination``'s checks (short of replay protection) would accept ``raw``.

    ``skew_ms`` is the clock-skew allowance the tiers verify with
    (``AGENTS_ENVELOPE_CLOCK_SKEW_S`` x 1000). For the view, ``raw`` is the EVENT an
    announcement carries (see :func:`event_text`) and ``announced`` the job id and
    status that announcement claims. ``waiting`` is the job id and epoch of a job
    that waits for a message at that epoch (a parked target): a task goes on with an
    authentic, well-addressed envelope that expired if it is about that job at that
    epoch (:func:`project.core.hops.readmit`; a target is assigned to the
    destination's own worker), so such an envelope counts as accepted. The view
    readmits nothing.
    """
    lapsed = False
    try:
        if destination.route is Route.ANNOUNCEMENT:
            raw = json.loads(event_text(raw))  # what the view does first
        try:
            envelope = verify(raw, keyring, max_bytes=max_bytes, skew_ms=skew_ms)
        except LapsedEnvelopeError as error:
            if destination.route is Route.ANNOUNCEMENT or error.envelope is None:
                return False
            envelope, lapsed = error.envelope, True
        if envelope.type is not destination.message_type:
            return False
        if envelope.recipient != destination.recipient:
            return False
        message = destination.message.from_payload(envelope.payload)
    except (A2AError, ValueError):
        return False
    if lapsed:
        epoch = message.expected_epoch if isinstance(message, DispatchRequest) else message.epoch
        return waiting is not None and (message.job_id, epoch) == waiting
    if announced is not None and isinstance(message, JobEvent):
        return (message.job_id, message.status.value) == announced
    return True


class Forger:
    """Parks targets and builds genuine and forged messages for them."""

    def __init__(self, rt: Runtime, client: Celery, dests: list[Destination], logs: Path) -> None:
        self.rt = rt
        self.client = client
        self.dests = dests
        self.services = {d.name: d.services for d in dests}
        self.keyring = rt.keyring
        self.max_bytes = rt.settings.max_payload_bytes
        self.skew_ms = int(rt.settings.envelope_clock_skew_s * 1000)
        """The clock-skew allowance the tiers verify with (the deployment's settings)."""
        self.attacker = Signer(Keyring({self.keyring.active_key_id: ATTACKER_SECRET}), ttl_s=3600)
        self.rogue = Signer(Keyring({"rogue": ATTACKER_SECRET}), ttl_s=3600)
        self._lock = threading.Lock()
        self.logs = logs
        """The deployment's log folder (for inputs that Celery refuses before any task)."""
        self._log_baseline: dict[tuple[str, tuple[str, ...]], int] = {}
        self.sent: list[SentInput] = []
        self._announced: dict[str, AnnouncementOutcome] = {}
        self._outcomes: dict[str, dict[str, Any]] = {}
        """Task id -> what the result backend holds for it, as found so far."""
        self.targets: dict[str, tuple[dict[str, str], list[str]]] = {}
        """Target id -> (record, chain) as parked: what they must still be at the end."""

    # --- targets ---------------------------------------------------------------

    def park_target(self, worker_id: str) -> str:
        """A throwaway job ASSIGNED to ``worker_id`` at epoch 1, unseen by the health check."""
        job_id = f"{TARGET_PREFIX}{uuid.uuid4().hex}"
        now = now_ms()
        record = {
            "id": job_id,
            "task_type": "compute",
            "status": JobStatus.ASSIGNED.value,
            "epoch": str(PARKED_EPOCH),
            "attempts": "1",
            "assignee": worker_id,
            "priority": Priority.NORMAL.value,
            "created_ms": str(now),
            "updated_ms": str(now),
            "deadline_ms": str(now + 3_600_000),
            "payload": json.dumps(PAYLOAD, separators=(",", ":")),
            "requirements": Requirements().model_dump_json(),
            "dispatch_msg": uuid.uuid4().hex,
        }
        self.rt.redis.hset(KEY_JOB + job_id, mapping=cast(Any, record))
        with self._lock:
            self.targets[job_id] = (record, [])
        return job_id

    def state_of(self, job_ids: list[str]) -> dict[str, tuple[dict[str, str], list[str], bool]]:
        """Record, chain and whether a backend result exists, for each job id.

        The chain is part of the record (its ``link:`` fields); it is returned apart too.
        """
        pipe = self.rt.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(KEY_JOB + job_id)
            pipe.exists(RESULT_KEY_PREFIX + job_id)
        replies = pipe.execute()
        return {
            job_id: (replies[2 * i], chain_of(replies[2 * i]), bool(replies[2 * i + 1]))
            for i, job_id in enumerate(job_ids)
        }

    # --- genuine messages -----------------------------------------------------------

    def genuine(
        self,
        destination: Destination,
        job_id: str,
        *,
        signer: Signer | None = None,
        ttl_ms: int | None = None,
        recipient: str | None = None,
        message_type: MessageType | None = None,
        payload: dict[str, Any] | None = None,
    ) -> Envelope:
        """The message a genuine sender would send ``destination`` about ``job_id``."""
        signer = signer or self.rt.signer
        worker = destination.worker_id
        if destination.message is WorkOrder:
            body: dict[str, Any] = WorkOrder(
                job_id=job_id, epoch=1, task_type="compute", payload=PAYLOAD
            ).model_dump(mode="json")
            sender, origin = DISTRIBUTOR, COORDINATOR
        elif destination.message is DispatchRequest:
            body = _dispatch_request(job_id, expected_epoch=1, reason="reroute").model_dump(
                mode="json"
            )
            sender, origin = COORDINATOR, COORDINATOR
        elif destination.message is WorkReport:
            body = WorkReport(
                job_id=job_id,
                epoch=1,
                status=JobStatus.COMPLETED,
                result=FORGED_RESULT,
                worker_id=worker,
                duration_ms=1.0,
            ).model_dump(mode="json")
            sender, origin = worker, COORDINATOR
        else:
            body = JobEvent(
                job_id=job_id, epoch=1, status=ANNOUNCED_STATUS, worker_id=worker
            ).model_dump(mode="json")
            sender, origin = DISTRIBUTOR, COORDINATOR
        return signer.sign(
            message_type or destination.message_type,
            sender=sender,
            recipient=recipient or destination.recipient,
            payload=body if payload is None else payload,
            origin=origin,
            request_id=job_id,
            parent_request_id=uuid.uuid4().hex,
            ttl_ms=ttl_ms,
        )

    # --- sending ----------------------------------------------------------------------

    def send(
        self,
        destination: Destination,
        raw: Any,
        *,
        kind: str,
        target: str,
        serializer: str | None = None,
        expect: str | None = None,
    ) -> SentInput:
        """Put ``raw`` on the destination's queue as its task's argument.

        For the view: announce that ``target`` was ABANDONED, with ``raw`` as its EVENT.
        """
        if destination.route is Route.ANNOUNCEMENT:
            message = self.announcement(destination, target, raw)
            return self.announce(destination, message, kind=kind, target=target, expect=expect)
        task_id = f"chaos-bad-{uuid.uuid4().hex}"
        options: dict[str, Any] = {"queue": destination.queue, "task_id": task_id}
        if destination.task == TASK_EXECUTE:
            # What the distributor attaches: an accepted order's result goes on to complete.
            options["link"] = signature(TASK_COMPLETE, queue=DISTRIBUTOR_QUEUE, app=self.client)
        if serializer:
            options["serializer"] = serializer
            self._note_log_baseline(LOG_PICKLE, destination)
        self.client.send_task(destination.task, args=[raw], **options)
        sent = SentInput(
            task_id,
            kind,
            destination.name,
            target,
            LOG_PICKLE if serializer == "pickle" else None,
            expect,
        )
        with self._lock:
            self.sent.append(sent)
        return sent

    def send_undecodable(self, destination: Destination, text: str, *, target: str) -> SentInput:
        """Publish a task message whose body is not valid JSON, with a raw kombu producer."""
        task_id = f"chaos-bad-{uuid.uuid4().hex}"
        headers = {
            "lang": "py",
            "task": destination.task,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "argsrepr": "",
            "kwargsrepr": "",
        }
        self._note_log_baseline(LOG_UNDECODABLE, destination)
        with self.client.producer_or_acquire() as producer:
            producer.publish(
                text,
                exchange="",
                routing_key=destination.queue,
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers,
            )
        sent = SentInput(task_id, "truncated JSON body", destination.name, target, LOG_UNDECODABLE)
        with self._lock:
            self.sent.append(sent)
        return sent

    def announcement(self, destination: Destination, job_id: str, raw: Any) -> dict[str, Any]:
        """A final announcement of ``job_id`` (ABANDONED) that carries ``raw`` as its EVENT."""
        return {
            "job_id": job_id,
            "status": ANNOUNCED_STATUS.value,
            "epoch": 1,
            "assignee": destination.worker_id,
            "event": event_text(raw),
        }

    def announce(
        self,
        destination: Destination,
        message: dict[str, Any],
        *,
        kind: str,
        target: str,
        expect: str | None = None,
    ) -> SentInput:
        """Publish one announcement and wait until its refusal is counted (or a few seconds).

        One at a time, and only while nothing else is refused: the counter's rise is
        this announcement's refusal.
        """
        outcome = self.publish_counted(destination, message)
        sent = SentInput(
            f"chaos-announcement-{uuid.uuid4().hex}",
            kind,
            destination.name,
            target,
            expect=expect,
            route=Route.ANNOUNCEMENT,
        )
        with self._lock:
            self.sent.append(sent)
            self._announced[sent.task_id] = outcome
        return sent

    def publish_counted(
        self, destination: Destination, message: dict[str, Any]
    ) -> AnnouncementOutcome:
        """Publish an announcement; wait until each view that heard it counted a refusal.

        Gives up after :data:`ANNOUNCEMENT_WAIT_S` (a believed announcement counts none).
        """
        before = self.refusals()
        receivers = int(self.rt.redis.publish(destination.queue, json.dumps(message)))
        counted: Counter[str] = Counter()
        deadline = time.monotonic() + ANNOUNCEMENT_WAIT_S
        while receivers:
            counted = self.refusals() - before
            if counted.total() >= receivers or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        return AnnouncementOutcome(receivers, dict(counted))

    def refusals(self) -> Counter[str]:
        """Refused envelopes counted so far by every tier and view, by reason."""
        raw: dict[str, str] = self.rt.redis.hgetall(KEY_STATS_REFUSED)  # type: ignore[assignment]
        return Counter({reason: int(n) for reason, n in raw.items()})

    def _note_log_baseline(self, marker: str, destination: Destination) -> None:
        """Count the marker's lines already in the consumers' logs, before the first input."""
        key = (marker, destination.services)
        if key not in self._log_baseline:
            self._log_baseline[key] = _count_log_markers(self.logs, [key])[key]

    # --- the hand-made cases ------------------------------------------------------------

    def send_crafted(self, destination: Destination) -> None:
        """Every hand-made forgery, each aimed at a target of its own."""
        if destination.route is Route.ANNOUNCEMENT:
            for kind, (forge, expect) in self._crafted_announcements(destination).items():
                target = self.park_target(destination.worker_id)
                self.announce(destination, forge(target), kind=kind, target=target, expect=expect)
            return
        for kind, (forge, expect) in self._crafted_cases(destination).items():
            target = self.park_target(destination.worker_id)
            raw = forge(target)
            if kind == "pickle-serialized":
                self.send(destination, raw, kind=kind, target=target, serializer="pickle")
            elif kind == "truncated JSON body":
                self.send_undecodable(destination, raw, target=target)
            else:
                self.send(destination, raw, kind=kind, target=target, expect=expect)

    def _crafted_cases(
        self, destination: Destination
    ) -> dict[str, tuple[Callable[[str], Any], str | None]]:
        """Kind -> (forge a raw message for a target job id, the refusal it must meet)."""

        def wire(job_id: str, **options: Any) -> dict[str, Any]:
            return self.genuine(destination, job_id, **options).to_wire()

        def tampered(job_id: str) -> dict[str, Any]:
            forged = wire(job_id)
            body = forged["payload"]
            if destination.message is WorkOrder:
                body["payload"]["values"] = [1000, 2000]
            elif destination.message is DispatchRequest:
                body["priority"] = Priority.URGENT.value
            elif destination.message is WorkReport:
                body["result"] = {"operation": "sum", "result": 1000}
            else:
                body["worker_id"] = "w-forged"
            return forged

        def retyped_unsigned(job_id: str) -> dict[str, Any]:
            forged = wire(job_id)
            forged["causal"]["sequence_number"] = str(forged["causal"]["sequence_number"])
            return forged

        def retyped_resigned(job_id: str) -> dict[str, Any]:
            forged = wire(job_id)
            forged["expires_at_ms"] = str(forged["expires_at_ms"])
            return resign(forged, self.keyring)

        def payload_retyped(job_id: str) -> dict[str, Any]:
            forged = wire(job_id)
            epoch_field = "expected_epoch" if destination.message is DispatchRequest else "epoch"
            forged["payload"][epoch_field] = "one"
            return resign(forged, self.keyring)

        def oversized(job_id: str) -> dict[str, Any]:
            blob = "x" * (self.max_bytes + 1024)
            body = self.genuine(destination, job_id).payload
            if destination.message in (WorkOrder, DispatchRequest):
                body = {**body, "payload": {**PAYLOAD, "blob": blob}}
            elif destination.message is WorkReport:
                body = {**body, "result": {"blob": blob}}
            else:
                body = {**body, "worker_id": blob}
            return self.genuine(destination, job_id, payload=body).to_wire()

        def expired(job_id: str) -> dict[str, Any]:
            # Authentic and well addressed, an hour past its expiry (beyond any clock-skew
            # allowance), so verify raises LapsedEnvelopeError. The tasks then readmit an
            # envelope that is the very message its job waits for (hops.readmit: same
            # epoch, unfinished, right assignee), as if it had expired behind a backlog
            # in our own queue; the target waits at epoch 1, so this one is about epoch
            # 2, which the target is not at: a copy of a message that cannot be current,
            # which stays refused (ExpiredEnvelopeError, as LapsedEnvelopeError).
            body = dict(self.genuine(destination, job_id).payload)
            epoch_field = "expected_epoch" if destination.message is DispatchRequest else "epoch"
            body[epoch_field] = PARKED_EPOCH + 1
            return wire(job_id, ttl_ms=EXPIRED_TTL_MS, payload=body)

        def stripped(job_id: str) -> dict[str, Any]:
            forged = wire(job_id)
            del forged["signature"]
            return forged

        def truncated(job_id: str) -> str:
            text = json.dumps(wire(job_id))
            return text[: len(text) // 2]

        other_recipient = {
            MessageType.REQUEST: "w-elsewhere",
            MessageType.RESPONSE: COORDINATOR,
            MessageType.EVENT: DISTRIBUTOR,
        }[destination.message_type]
        other_type = (
            MessageType.RESPONSE
            if destination.message_type is not MessageType.RESPONSE
            else MessageType.REQUEST
        )
        bad_signature, malformed = "SignatureError", "MalformedEnvelopeError"
        misdirected = "MisdirectedEnvelopeError"
        return {
            "tampered payload": (tampered, bad_signature),
            "wrong key (bad secret for the active key id)": (
                lambda j: wire(j, signer=self.attacker),
                bad_signature,
            ),
            "unknown key id": (lambda j: wire(j, signer=self.rogue), "UnknownKeyError"),
            "expired": (expired, "ExpiredEnvelopeError"),
            "misdirected (another recipient)": (
                lambda j: wire(j, recipient=other_recipient),
                misdirected,
            ),
            "wrong message type": (lambda j: wire(j, message_type=other_type), misdirected),
            "wrong field types (not re-signed)": (retyped_unsigned, bad_signature),
            "wrong field types (re-signed)": (retyped_resigned, malformed),
            "wrong payload types (re-signed)": (payload_retyped, malformed),
            "payload over the size limit": (oversized, malformed),
            "text over the size limit": (
                lambda j: json.dumps({"pad": "x" * (self.max_bytes + 8192)}),
                malformed,
            ),
            "signature stripped": (stripped, malformed),
            "truncated JSON text": (truncated, malformed),
            "truncated JSON body": (lambda j: json.dumps(wire(j))[:40], None),
            "pickle-serialized": (lambda j: wire(j), None),
            "not an object (list)": (lambda j: [wire(j)], malformed),
            "not an object (number)": (lambda j: 42, malformed),
            "not an object (null)": (lambda j: None, malformed),
        }

    def _crafted_announcements(
        self, destination: Destination
    ) -> dict[str, tuple[Callable[[str], dict[str, Any]], str | None]]:
        """Kind -> (a bad final announcement of a target job id, the refusal it must meet).

        Every hand-made forgery of an envelope rides as the announcement's EVENT (but
        pickle and an undecodable body, which only a Celery message can be), and then
        the announcement's own lies: no EVENT, one for another job or another status.
        """
        cases: dict[str, tuple[Callable[[str], dict[str, Any]], str | None]] = {
            f"announcement: {kind}": (
                lambda j, forge=forge: self.announcement(destination, j, forge(j)),  # type: ignore[misc]
                expect,
            )
            for kind, (forge, expect) in self._crafted_cases(destination).items()
            if kind not in ("truncated JSON body", "pickle-serialized")
        }

        def genuine_event(job_id: str, **options: Any) -> dict[str, Any]:
            return self.genuine(destination, job_id, **options).to_wire()

        def without_event(job_id: str) -> dict[str, Any]:
            message = self.announcement(destination, job_id, "")
            del message["event"]
            return message

        def event_as_object(job_id: str) -> dict[str, Any]:
            message = self.announcement(destination, job_id, "")
            message["event"] = genuine_event(job_id)
            return message

        def another_job(job_id: str) -> dict[str, Any]:
            other = f"{TARGET_PREFIX}{uuid.uuid4().hex}"
            return self.announcement(destination, job_id, genuine_event(other))

        def another_status(job_id: str) -> dict[str, Any]:
            body = JobEvent(
                job_id=job_id, epoch=1, status=JobStatus.COMPLETED, worker_id=destination.worker_id
            ).model_dump(mode="json")
            return self.announcement(destination, job_id, genuine_event(job_id, payload=body))

        malformed = "MalformedEnvelopeError"
        cases.update(
            {
                "announcement: no event": (without_event, malformed),
                "announcement: empty event": (
                    lambda j: self.announcement(destination, j, ""),
                    malformed,
                ),
                "announcement: event not text (an object)": (event_as_object, malformed),
                "announcement: a genuine EVENT of another job": (another_job, malformed),
                "announcement: a genuine EVENT of another status": (another_status, malformed),
            }
        )
        return cases

    # --- replays of finished messages ------------------------------------------------

    def replay_controls(self, dests: list[Destination], timeout_s: float = 60.0) -> list[str]:
        """Run one genuine message per tier to its end, then replay it. Returns the control ids.

        The originals are legitimate (their handler runs are counted as such); only the
        replays are bad inputs, each aimed at its finished control job.
        """
        originals: list[tuple[Destination, str, dict[str, Any]]] = []
        for destination in dests:
            if destination.task == TASK_EXECUTE:
                job_id, wire = self._control_work_order(destination)
            elif destination.task == TASK_ASSIGN:
                job_id, wire = self._control_dispatch(destination)
            elif destination.task == TASK_COMPLETE:
                job_id, wire = self._control_report(destination)
            else:
                continue  # the view: see genuine_announcement
            originals.append((destination, job_id, wire))
        # The replay rule: only a copy of a message whose job is already final is a
        # replay (a copy for an unfinished job is a redelivery and runs). So each
        # original's job is driven to its final status, and its EVENT recorded, before
        # its copy is sent.
        self._wait_settled([job_id for _, job_id, _ in originals], timeout_s)
        controls = sorted({job_id for _, job_id, _ in originals})
        settled = self.state_of(controls)
        with self._lock:
            for job_id in controls:
                record, chain, _ = settled[job_id]
                self.targets[job_id] = (record, chain)
        for destination, job_id, wire in originals:
            self.send(
                destination,
                wire,
                kind="replay of a finished message",
                target=job_id,
                expect="ReplayError",
            )
        return controls

    def _send_genuine(self, destination: Destination, wire: dict[str, Any]) -> None:
        options: dict[str, Any] = {"queue": destination.queue}
        if destination.task == TASK_EXECUTE:
            options["link"] = signature(TASK_COMPLETE, queue=DISTRIBUTOR_QUEUE, app=self.client)
        self.client.send_task(destination.task, args=[wire], **options)

    def _new_control(self) -> str:
        job_id = f"{CONTROL_PREFIX}{uuid.uuid4().hex}"
        spec = JobSpec(task_type="compute", payload=PAYLOAD)
        self.rt.jobs.create(job_id, spec, deadline_ms=now_ms() + 600_000)
        return job_id

    def _assigned_control(self, worker_id: str) -> tuple[str, Envelope]:
        job_id = self._new_control()
        dispatch = self.rt.signer.request(
            sender=COORDINATOR, recipient=DISTRIBUTOR, payload={"job_id": job_id}, request_id=job_id
        )
        outcome = self.rt.jobs.assign(
            job_id, expected_epoch=0, worker_id=worker_id, max_attempts=3, dispatch=dispatch
        )
        if outcome.kind is not AssignKind.OK:
            raise RuntimeError(f"could not assign control job {job_id}: {outcome}")
        return job_id, dispatch

    def _control_work_order(self, destination: Destination) -> tuple[str, dict[str, Any]]:
        job_id, dispatch = self._assigned_control(destination.worker_id)
        order = WorkOrder(job_id=job_id, epoch=1, task_type="compute", payload=PAYLOAD)
        wire = self.rt.signer.reply(
            dispatch,
            MessageType.REQUEST,
            order.model_dump(mode="json"),
            sender=DISTRIBUTOR,
            recipient=destination.worker_id,
        ).to_wire()
        self._send_genuine(destination, wire)
        return job_id, wire

    def _control_dispatch(self, destination: Destination) -> tuple[str, dict[str, Any]]:
        job_id = self._new_control()
        request = _dispatch_request(job_id, expected_epoch=0, reason="new")
        wire = self.rt.signer.request(
            sender=COORDINATOR,
            recipient=DISTRIBUTOR,
            payload=request.model_dump(mode="json"),
            request_id=job_id,
        ).to_wire()
        self._send_genuine(destination, wire)
        return job_id, wire

    def _control_report(self, destination: Destination) -> tuple[str, dict[str, Any]]:
        job_id, dispatch = self._assigned_control(destination.worker_id)
        report = WorkReport(
            job_id=job_id,
            epoch=1,
            status=JobStatus.COMPLETED,
            result={"operation": "sum", "result": 6},
            worker_id=destination.worker_id,
            duration_ms=1.0,
        )
        wire = self.rt.signer.reply(
            dispatch,
            MessageType.RESPONSE,
            report.model_dump(mode="json"),
            sender=destination.worker_id,
            recipient=DISTRIBUTOR,
        ).to_wire()
        self._send_genuine(destination, wire)
        return job_id, wire

    def genuine_announcement(self, destination: Destination) -> tuple[str, dict[str, Any]]:
        """End a new control job ABANDONED as the distributor does; return it and its announcement.

        The job-finish script announces it, with its signed EVENT, to the view, which
        believes it. The returned copy of that announcement is what a replay would send.
        """
        job_id, dispatch = self._assigned_control(destination.worker_id)
        event = self.rt.signer.reply(
            dispatch,
            MessageType.EVENT,
            JobEvent(
                job_id=job_id, epoch=1, status=ANNOUNCED_STATUS, worker_id=destination.worker_id
            ).model_dump(mode="json"),
            sender=DISTRIBUTOR,
            recipient=COORDINATOR,
        )
        outcome = self.rt.jobs.finish(
            job_id,
            epoch=1,
            status=ANNOUNCED_STATUS,
            error={"type": "JobAbandonedError", "message": "a chaos control"},
            cause=dispatch,
            event=event,
        )
        if outcome.kind is not FinishKind.RECORDED:
            raise RuntimeError(f"could not finish control job {job_id}: {outcome}")
        settled = self.state_of([job_id])[job_id]
        with self._lock:
            self.targets[job_id] = (settled[0], settled[1])
        return job_id, self.announcement(destination, job_id, event.to_wire())

    def _wait_settled(self, job_ids: list[str], timeout_s: float) -> None:
        """Until each job is final and the coordinator has followed its EVENT."""

        def settled() -> bool:
            for job_id in job_ids:
                record = self.rt.jobs.get(job_id)
                if record is None or not record.status.is_final:
                    return False
                if not any(link["type"] == "EVENT" for link in self.rt.jobs.chain(job_id)):
                    return False
            return True

        if not _wait(settled, timeout_s):
            raise RuntimeError(f"replay controls did not finish within {timeout_s}s: {job_ids}")

    # --- hypothesis ----------------------------------------------------------------------

    def send_generated(
        self, dests: list[Destination], count: int, seed: int, pause_s: float = 0.0
    ) -> int:
        """Send ``count`` hypothesis-generated malformed envelopes; return how many were sent."""
        sent = 0
        for round_seed in range(seed, seed + 50):  # a run may stop early; a few more finish
            if sent >= count:
                break
            sent += _generate(self, dests, count - sent, round_seed, pause_s)
        return sent

    # --- the verdict -----------------------------------------------------------------------

    def settle(self, timeout_s: float) -> bool:
        """Wait until every input sent to a task is accounted for; False after ``timeout_s``."""
        with self._lock:
            sent = [s for s in self.sent if s.route is Route.TASK]
        by_backend = [s for s in sent if s.log_marker is None]
        needs = self._log_needs([s for s in sent if s.log_marker is not None])
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [s.task_id for s in by_backend if s.task_id not in self._outcomes]
            self._outcomes.update(self._backend_outcomes(missing))
            done = all(s.task_id in self._outcomes for s in by_backend)
            if done and self._logged(needs) == sum(needs.values()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)

    def verdict(self, timeout_s: float, hypothesis: int) -> Verdict:
        """Wait until every input is accounted for (or ``timeout_s``), then judge."""
        self.settle(timeout_s)
        with self._lock:
            sent = list(self.sent)
        by_backend = [s for s in sent if s.route is Route.TASK and s.log_marker is None]
        announced = [s for s in sent if s.route is Route.ANNOUNCEMENT]
        needs = self._log_needs([s for s in sent if s.log_marker is not None])
        logged = self._logged(needs)
        verdict = Verdict(tried=len(sent), hypothesis=hypothesis, announcements=len(announced))
        verdict.by_kind = dict(Counter(s.kind for s in sent))
        reasons: Counter[str] = Counter()
        errored: Counter[str] = Counter()

        def refused(item: SentInput, reason: str) -> None:
            reasons[reason] += 1
            if item.expect is not None and not refusal_matches(reason, item.expect):
                wrong = verdict.unexpected_reasons.setdefault(item.kind, {})
                wrong[reason] = wrong.get(reason, 0) + 1

        for item in by_backend:
            outcome = self._outcomes.get(item.task_id)
            if outcome is None:
                verdict.unaccounted += 1
            elif outcome.get("status") == "FAILURE" and _is_refusal(outcome):
                refused(item, str(outcome["result"].get("exc_type")))
            else:
                errored[_describe(outcome)] += 1
        for item in announced:
            reason = _announcement_refusal(self._announced[item.task_id], item.expect)
            if reason is None:
                verdict.unaccounted += 1
            else:
                verdict.announcements_refused += 1
                refused(item, reason)
        verdict.refused_by_reason = dict(reasons)
        verdict.errored = dict(errored)
        verdict.refused_by_celery = logged
        verdict.unaccounted += sum(needs.values()) - logged
        verdict.refused = sum(reasons.values()) + logged
        verdict.changed_targets = self.changed_targets()
        return verdict

    def changed_targets(self) -> list[str]:
        """Targets and replay controls that are no longer as they were parked or settled."""
        with self._lock:
            targets = dict(self.targets)
        now = self.state_of(list(targets))
        changed = []
        for job_id, (record, chain) in targets.items():
            current_record, current_chain, has_result = now[job_id]
            moved = current_record != record or current_chain != chain
            # A target has no result; a replay control has its one genuine result.
            if moved or (job_id.startswith(TARGET_PREFIX) and has_result):
                changed.append(job_id)
        return changed

    def _logged(self, needs: dict[tuple[str, tuple[str, ...]], int]) -> int:
        """How many of the needed marker lines the logs show (since the first input)."""
        seen = _count_log_markers(self.logs, list(needs))
        return sum(
            min(need, seen[key] - self._log_baseline.get(key, 0)) for key, need in needs.items()
        )

    def _log_needs(self, by_log: list[SentInput]) -> dict[tuple[str, tuple[str, ...]], int]:
        """How many marker lines each group of consuming services must show."""
        needs: Counter[tuple[str, tuple[str, ...]]] = Counter()
        for item in by_log:
            assert item.log_marker is not None
            needs[(item.log_marker, self.services[item.destination])] += 1
        return dict(needs)

    def _backend_outcomes(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start : start + 500]
            values: list[str | None] = self.rt.redis.mget(  # type: ignore[assignment]
                [RESULT_KEY_PREFIX + t for t in chunk]
            )
            for task_id, value in zip(chunk, values, strict=True):
                if value is not None:
                    found[task_id] = json.loads(value)
        return found


def _announcement_refusal(outcome: AnnouncementOutcome, expect: str | None) -> str | None:
    """The refusal (A2AError class name) an announcement met, or None if it met none.

    Every view that heard it must have counted one; if several reasons rose meanwhile
    (something else was refused too), the expected one is credited if it rose enough.
    """
    if not outcome.receivers or sum(outcome.counted.values()) < outcome.receivers:
        return None
    names: Counter[str] = Counter()
    for reason, n in outcome.counted.items():
        names[REFUSAL_NAMES.get(reason, reason)] += n
    if expect is not None and names[expect] >= outcome.receivers:
        return expect
    return names.most_common(1)[0][0]


def _is_refusal(outcome: dict[str, Any]) -> bool:
    result = outcome.get("result")
    if not isinstance(result, dict) or result.get("exc_module") != errors.__name__:
        return False
    cls = getattr(errors, str(result.get("exc_type")), None)
    return isinstance(cls, type) and issubclass(cls, A2AError)


def _describe(outcome: dict[str, Any]) -> str:
    result = outcome.get("result")
    if isinstance(result, dict) and "exc_type" in result:
        return f"{outcome.get('status')}:{result['exc_type']}"
    return str(outcome.get("status"))


def _count_log_markers(
    logs: Path, keys: list[tuple[str, tuple[str, ...]]]
) -> dict[tuple[str, tuple[str, ...]], int]:
    """Lines with each marker in the logs of each group of services."""
    texts: dict[str, str] = {}
    counts: dict[tuple[str, tuple[str, ...]], int] = {}
    for marker, services in keys:
        total = 0
        for name in services:
            if name not in texts:
                path = logs / f"{name}.log"
                texts[name] = path.read_text(errors="replace") if path.exists() else ""
            total += texts[name].count(marker)
        counts[(marker, services)] = total
    return counts


def _wait(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --- hypothesis generation ----------------------------------------------------------------

MUTATIONS = (
    "not an object",
    "object of junk",
    "field removed",
    "field retyped",
    "field added",
    "signature altered",
    "key id altered",
    "wrong secret",
    "expired",
    "misdirected",
    "truncated text",
)


def _generate(
    forger: Forger, dests: list[Destination], count: int, seed: int, pause_s: float
) -> int:
    """One hypothesis run of up to ``count`` examples, each sent as it is generated."""
    from hypothesis import HealthCheck, Phase, given, reject, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    def not_kombu_marker(value: dict[str, Any]) -> bool:
        # kombu's JSON decoder turns {"__type__": ..., "__value__": ...} into an object.
        return "__type__" not in value

    leaves = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=24)
    )
    values = st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4).filter(not_kombu_marker)
        ),
        max_leaves=8,
    )
    sent = 0

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(st.data())
    def generate(data: Any) -> None:
        nonlocal sent
        if sent >= count:
            return
        destination = data.draw(st.sampled_from(dests), label="destination")
        mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
        target = forger.park_target(destination.worker_id)
        wire = forger.genuine(destination, target).to_wire()
        raw = _mutate(data, st, values, mutation, wire, forger, destination)
        announced = (target, ANNOUNCED_STATUS.value)
        if accepted_by_tier(
            destination,
            raw,
            forger.keyring,
            forger.max_bytes,
            skew_ms=forger.skew_ms,
            announced=announced,
            waiting=(target, PARKED_EPOCH),
        ):
            reject()
        prefix = "announcement: " if destination.route is Route.ANNOUNCEMENT else ""
        forger.send(destination, raw, kind=f"{prefix}hypothesis: {mutation}", target=target)
        sent += 1
        if pause_s:
            time.sleep(pause_s)

    generate()
    return sent


def _paths(wire: dict[str, Any]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [(key,) for key in wire]
    paths += [("causal", key) for key in wire["causal"]]
    paths += [("payload", key) for key in wire["payload"]]
    return paths


def _set(wire: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = wire
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _get(wire: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = wire
    for key in path:
        node = node[key]
    return node


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _mutate(
    data: Any,
    st: Any,
    values: Any,
    mutation: str,
    wire: dict[str, Any],
    forger: Forger,
    destination: Destination,
) -> Any:
    raw: Any = copy.deepcopy(wire)
    resigned = False
    if mutation == "not an object":
        return data.draw(values.filter(lambda v: not isinstance(v, dict)))
    if mutation == "object of junk":
        return data.draw(st.dictionaries(st.text(max_size=12), values, max_size=6))
    if mutation == "field removed":
        path = data.draw(st.sampled_from(_paths(raw)))
        node = raw if len(path) == 1 else raw[path[0]]
        del node[path[-1]]
        resigned = path != ("signature",) and data.draw(st.booleans())
    elif mutation == "field retyped":
        path = data.draw(st.sampled_from(_paths(raw)))
        old = _get(raw, path)
        _set(raw, path, data.draw(values.filter(lambda v: _json_type(v) != _json_type(old))))
        resigned = path not in (("signature",), ("key_id",)) and data.draw(st.booleans())
    elif mutation == "field added":
        place = data.draw(st.sampled_from(((), ("causal",), ("payload",))))
        node = raw
        for key in place:
            node = node[key]
        name = data.draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in node))
        node[name] = data.draw(values)
        resigned = data.draw(st.booleans())
    elif mutation == "signature altered":
        raw["signature"] = data.draw(
            st.text(max_size=80) | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
        )
    elif mutation == "key id altered":
        raw["key_id"] = data.draw(st.text(max_size=70))
    elif mutation == "wrong secret":
        secret = data.draw(st.binary(min_size=32, max_size=64))
        raw["signature"] = _mac(secret, raw)
    elif mutation == "expired":
        # Relative to now: hypothesis needs the same draws to mean the same thing on replay.
        raw["expires_at_ms"] = max(0, now_ms() - data.draw(st.integers(1, 10**13)))
        resigned = True
    elif mutation == "misdirected":
        if data.draw(st.booleans()):
            raw["recipient"] = data.draw(st.text(max_size=20))
        else:
            raw["type"] = data.draw(st.sampled_from([t.value for t in MessageType]))
        resigned = True
    elif mutation == "truncated text":
        text = json.dumps(raw)
        return text[: len(text) * data.draw(st.integers(0, 999)) // 1000]
    if resigned:
        # Not canonical JSON (cannot be): it goes out with its old signature.
        with contextlib.suppress(TypeError, ValueError):
            resign(raw, forger.keyring)
    return raw


__all__ = [
    "AnnouncementOutcome",
    "Destination",
    "Forger",
    "Route",
    "SentInput",
    "Verdict",
    "accepted_by_tier",
    "announcement_destination",
    "destinations",
]
