"""Carry out a policy decision about one message: the database write, committed, then SQS."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.jobs import queries, transitions
from app.jobs.queries import JobView
from app.sqs.limits import MAX_DELAY_SECONDS
from app.sqs.queue import Message, Outgoing, SqsQueue
from worker.policy import Decision, Sqs


def settle(
    sessions: sessionmaker[Session],
    sqs: SqsQueue,
    message: Message,
    decide: Callable[[JobView | None], Decision],
) -> Decision:
    """Look the message's job up, decide, write (committed first), then act on the message."""
    assert message.job_id is not None
    released: list[transitions.Ready] = []
    with translate_db_errors(), sessions.begin() as session:
        current = queries.view(session, message.job_id)
        decision = decide(current)
        if decision.fail_reason is not None and transitions.fail_dead_lettered(
            session, message.job_id, decision.fail_reason
        ):
            # Its waiting workflow children follow their on_parent_failure policy.
            released = transitions.settle_children(session, [message.job_id])
        if decision.redelivered:
            transitions.count_redelivery(session, message.job_id)
    if released:
        sent = sqs.send_batch(
            [Outgoing(r.id, r.trace_id, 0, r.priority, r.queue) for r in released]
        )
        with translate_db_errors(), sessions.begin() as session:
            queries.mark_published(session, sent)
    if decision.sqs == Sqs.HIDE:
        sqs.change_visibility(message, decision.seconds)
        return decision
    if decision.resend is not None and current is not None:
        # The fresh message first: a crash before the delete leaves a harmless duplicate.
        delay = int(min(MAX_DELAY_SECONDS, decision.resend + 0.999))
        sqs.send_batch(
            [Outgoing(message.job_id, message.trace_id, delay, current.priority, current.queue)]
        )
    sqs.delete(message)
    return decision
