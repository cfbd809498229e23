"""Backfilled values equal what live code records for the same conversation (one policy function)."""
from __future__ import annotations

import pytest

from calls import backfill
from calls.models import Call, ConversationMessage
from calls.services import conversation_message_add
from calls.tokens import count_tokens


@pytest.mark.django_db(transaction=True)
def test_backfill_reproduces_live_values(settings) -> None:
    settings.CONTEXT_MAX_TOKENS, settings.CONTEXT_TARGET_TOKENS = 60, 40  # prune within a short call
    call = Call.objects.create(phone_number="+15555550123", status="in_progress", tier="tier1")
    lines = ["You are Sunrise Realty's assistant.", "Hi, is the house on Oak St still for sale?",
             "Yes! 3 bedrooms, 2 baths, listed at $450,000.", "ok", "Can we see it Saturday at 10am?",
             '{"tool": "calendar.book", "status": "confirmed"}', "Booked. You'll get a text.", "thanks <|endoftext|>"]
    roles = ["system", "user", "assistant", "user", "user", "tool", "assistant", "user"]
    try:
        for turn, (role, content) in enumerate(zip(roles, lines)):
            conversation_message_add(call_id=call.pk, role=role, content=content, turn_index=turn)
        call.refresh_from_db()
        live = (call.total_context_tokens, call.context_pruned, call.pruning_count)
        live_messages = list(call.messages.values_list("token_count", "importance"))
        assert live_messages[1][0] == count_tokens(lines[1])
        assert live[1] is True, "the small limit should prune this conversation"

        ConversationMessage.objects.filter(call=call).update(token_count=None, importance=None)
        Call.objects.filter(pk=call.pk).update(total_context_tokens=None, context_pruned=False, pruning_count=0)
        backfill.backfill_context()

        call.refresh_from_db()
        assert (call.total_context_tokens, call.context_pruned, call.pruning_count) == live
        assert list(call.messages.values_list("token_count", "importance")) == live_messages
    finally:
        Call.objects.filter(pk=call.pk).delete()
