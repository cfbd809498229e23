"""Writes that live code (the voice agents) makes; they use the same token rule and context policy as the backfill."""
from __future__ import annotations

from dataclasses import asdict

from django.db import transaction

from calls.context_policy import ContextPolicy, ContextState, importance_of, policy_message, replay
from calls.models import Call, ConversationMessage
from calls.tokens import count_tokens


def call_context_refresh(*, call_id: int, policy: ContextPolicy | None = None) -> ContextState:
    """Recompute and store a call's context fields from its conversation."""
    rows = (ConversationMessage.objects.filter(call_id=call_id)
            .values_list("role", "content", "token_count", "importance"))
    state = replay(
        (policy_message(role=r, content=c, token_count=t, importance=i) for r, c, t, i in rows),
        policy or ContextPolicy.from_settings(),
    )
    Call.objects.filter(pk=call_id).update(**asdict(state))
    return state


def conversation_message_add(
    *, call_id: int, role: str, content: str, turn_index: int | None = None, importance: float | None = None
) -> ConversationMessage:
    """Store one turn of a live call with its token count and importance, and update the call's context fields."""
    with transaction.atomic():
        message = ConversationMessage.objects.create(
            call_id=call_id,
            role=role,
            content=content,
            turn_index=turn_index,
            token_count=count_tokens(content),
            importance=importance if importance is not None else importance_of(role, content),
        )
        call_context_refresh(call_id=call_id)
    return message
