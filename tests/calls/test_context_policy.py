"""The context policy on hand-computed conversations (costs: tokens + 3 a message, + 3 reply priming)."""
from __future__ import annotations

import random

import pytest

from calls.context_policy import (
    _FACT,
    ContextPolicy,
    ContextState,
    PolicyMessage,
    has_fact,
    importance_of,
    replay,
    state_from_totals,
)

SMALL = ContextPolicy(max_tokens=100, target_tokens=60, keep_recent=2, per_message=3, reply_priming=3)


def m(role: str, tokens: int, importance: float = 0.5) -> PolicyMessage:
    return PolicyMessage(role=role, token_count=tokens, importance=importance)


def test_no_messages_is_zero() -> None:
    assert replay([], SMALL) == ContextState(total_context_tokens=0, context_pruned=False, pruning_count=0)


def test_total_is_the_chat_format_count() -> None:
    # (10+3) + (20+3) + (30+3) + 3 = 72
    assert replay([m("system", 10), m("user", 20), m("assistant", 30)], SMALL) == ContextState(72, False, 0)


def test_one_pruning_event_drops_least_important_until_target() -> None:
    conversation = [m("system", 10, 1.0), m("user", 20, 0.6), m("assistant", 20, 0.4),
                    m("user", 20, 0.8), m("assistant", 20, 0.4)]
    # Running context +3 priming: 16, 39, 62, 85, 108 > 100 -> event 1. The last two are protected;
    # drop pos 2 (0.4): 85 > 60; drop pos 1 (0.6): 62 > 60; nothing left to drop: stop.
    # Total: 13 + 4 * 23 + 3 = 108.
    assert replay(conversation, SMALL) == ContextState(108, True, 1)


def test_pruning_repeats_as_the_conversation_grows() -> None:
    conversation = [m("system", 10, 1.0)] + [m("user" if i % 2 else "assistant", 20, 0.5) for i in range(8)]
    # After event 1 (at message 4) the context is system + last two = 13 + 46 = 59 (+3 = 62).
    # Message 5: 85; message 6: 108 > 100 -> event 2 drops the oldest unprotected (pos 3, 4) -> 62;
    # message 7: 85; message 8: 108 -> event 3. Total: 13 + 8 * 23 + 3 = 200.
    assert replay(conversation, SMALL) == ContextState(200, True, 3)


def test_equal_importance_drops_oldest_first_and_never_the_system_prompt() -> None:
    policy = ContextPolicy(max_tokens=100, target_tokens=80, keep_recent=1, per_message=3, reply_priming=3)
    # 13 + 23*4 = 105 (+3 = 108) at message 4: drop the oldest equal one (pos 1): 85 > 80; pos 2: 62.
    conversation = [m("system", 10, 0.0), m("user", 20), m("assistant", 20), m("user", 20), m("assistant", 20)]
    assert replay(conversation, policy).pruning_count == 1
    # A low-importance system prompt is still never dropped. Alone it is over the limit
    # (203 + 3 = 206: event 1, nothing to drop); with the protected user message 211 + 3 = 214
    # (event 2, still nothing to drop). Total 203 + 8 + 3 = 214.
    assert replay([m("system", 200, 0.0), m("user", 5)], policy) == ContextState(214, True, 2)


def test_the_most_recent_messages_are_never_dropped() -> None:
    policy = ContextPolicy(max_tokens=50, target_tokens=10, keep_recent=3, per_message=3, reply_priming=3)
    # Every message is protected when the event happens: the event is counted, nothing dropped,
    # and each later message over the limit is another event.
    state = replay([m("user", 20), m("assistant", 20), m("user", 20)], policy)
    assert state == ContextState(72, True, 1)


def test_totals_decide_exactly_the_conversations_that_were_never_pruned() -> None:
    # The backfill's shortcut: from (count, token sum) alone, the same state as the replay when
    # the conversation fits, and None exactly when the replay prunes. Boundary sizes included.
    rng = random.Random(7)
    for case in range(2000):
        size = rng.randint(0, 12)
        conversation = [m(rng.choice(["system", "user", "assistant", "tool"]), rng.randint(0, 30),
                          rng.choice([0.2, 0.5, 0.8])) for _ in range(size)]
        replayed = replay(conversation, SMALL)
        shortcut = state_from_totals(size, sum(c.token_count for c in conversation), SMALL)
        if shortcut is None:
            assert replayed.context_pruned, case
            assert replayed.total_context_tokens > SMALL.max_tokens
        else:
            assert shortcut == replayed, case
    fits = [m("user", 100 - 3 - 3)]  # exactly max_tokens: not pruned
    assert state_from_totals(1, 94, SMALL) == replay(fits, SMALL) == ContextState(100, False, 0)
    assert state_from_totals(1, 95, SMALL) is None and replay([m("user", 95)], SMALL).context_pruned


@pytest.mark.parametrize(
    ("role", "content", "expected"),
    [
        ("system", "You are a helpful assistant.", 1.0),
        ("user", "ok", 0.4),  # 0.6 - short
        ("user", "Our budget is around $450k", 0.8),  # 0.6 + facts
        ("user", "I am just browsing right now thanks", 0.6),
        ("assistant", "Great. What's your timeline for moving?", 0.6),  # 0.4 + question
        ("assistant", "Understood, I will note that down for you", 0.4),
        ("tool", '{"tool": "crm.update", "status": "done"}', 0.3),
        ("tool", "ok", 0.1),
        ("user", "yes 5pm", 0.6),  # 0.6 + 0.2 - 0.2
    ],
)
def test_importance_heuristic(role: str, content: str, expected: float) -> None:
    assert importance_of(role, content) == expected


def test_fact_check_agrees_with_its_regex_on_any_text() -> None:
    # has_fact takes a byte-level shortcut for ASCII text; it must answer as the regex does.
    rng = random.Random(11)
    alphabet = [*map(chr, range(128)), "٣", "５", "€", "é", "🏡", "我", "\u00a0"]
    texts = ["", "?", "no facts here", "call me at 5", "٣", "x" * 10_000 + "@"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    for text in texts:
        assert has_fact(text) == (_FACT.search(text) is not None), repr(text)
