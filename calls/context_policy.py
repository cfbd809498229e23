"""The context policy: what a call's conversation costs in context, and when it is pruned.

One function, ``replay``, serves live code (``calls/services.py``) and the backfill, so
backfilled values equal what a live call would have recorded.

Definitions (settings in brackets, defaults in docs/backfills.md, "Token counting and the context policy"):

- ``total_context_tokens``: the whole conversation as the chat format counts it: the sum over
  its messages of ``token_count + per_message`` [CONTEXT_TOKENS_PER_MESSAGE = 3], plus
  ``reply_priming`` [CONTEXT_REPLY_PRIMING_TOKENS = 3] when the call has messages; 0 when none.
- ``context_pruned`` / ``pruning_count``: replay the messages in conversation order into a
  running context. Whenever, after adding a message, the context (same chat-format count, over
  the messages still in it) exceeds ``max_tokens`` [CONTEXT_MAX_TOKENS = 8192], one pruning
  event happens: it drops the least important non-system messages, oldest first among equal
  importance, never one of the ``keep_recent`` [CONTEXT_KEEP_RECENT_MESSAGES = 4] most recent
  messages, until the context is at most ``target_tokens`` [CONTEXT_TARGET_TOKENS = 6144] or
  nothing more may be dropped. ``pruning_count`` is the number of such events;
  ``context_pruned`` is ``pruning_count > 0``.
- ``importance`` of a message that has none: ``importance_of(role, content)`` below.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from django.conf import settings

from calls.tokens import count_tokens

SYSTEM = "system"


@dataclass(frozen=True)
class ContextPolicy:
    """The numbers the policy runs on."""

    max_tokens: int = 8192
    target_tokens: int = 6144
    keep_recent: int = 4
    per_message: int = 3
    reply_priming: int = 3

    @classmethod
    def from_settings(cls) -> "ContextPolicy":
        return cls(
            max_tokens=settings.CONTEXT_MAX_TOKENS,
            target_tokens=settings.CONTEXT_TARGET_TOKENS,
            keep_recent=settings.CONTEXT_KEEP_RECENT_MESSAGES,
            per_message=settings.CONTEXT_TOKENS_PER_MESSAGE,
            reply_priming=settings.CONTEXT_REPLY_PRIMING_TOKENS,
        )


@dataclass(frozen=True)
class PolicyMessage:
    """What the policy needs of a message."""

    role: str
    token_count: int
    importance: float


@dataclass(frozen=True)
class ContextState:
    """The context fields of a call."""

    total_context_tokens: int
    context_pruned: bool
    pruning_count: int


_FACT = re.compile(r"[\d$@?]")
# In ASCII text the same characters are 0-9, $, @ and ?: deleting every other byte is faster
# than the regex, and the backfill asks this of millions of messages (docs/benchmarks.md, "Backfill throughput").
_NOT_FACT_BYTES = bytes(b for b in range(128) if not _FACT.match(chr(b))) + bytes(range(128, 256))


def has_fact(content: str) -> bool:
    """Whether ``content`` holds a digit (any script), a price, an e-mail address or a question."""
    if content.isascii():
        return bool(content.encode("ascii").translate(None, _NOT_FACT_BYTES))
    return _FACT.search(content) is not None


_ROLE_IMPORTANCE = {"user": 0.6, "assistant": 0.4, "tool": 0.3}
_OTHER_ROLE_IMPORTANCE = 0.4


def _importance(role_score: float, with_facts: bool, short: bool) -> float:
    return round(min(1.0, max(0.0, role_score + (0.2 if with_facts else 0.0) - (0.2 if short else 0.0))), 2)


# Every outcome of the heuristic, computed once: the backfill calls it for each of millions of messages.
_IMPORTANCE = {
    (role, with_facts, short): _importance(score, with_facts, short)
    for role, score in [*_ROLE_IMPORTANCE.items(), (None, _OTHER_ROLE_IMPORTANCE)]
    for with_facts in (False, True) for short in (False, True)
}


def importance_of(role: str, content: str) -> float:
    """Return a message's importance in [0, 1], for messages that were stored without one.

    The system prompt is kept longest (1.0). Leads' words matter more than the agent's, tool
    output least; anything with facts or questions (digits, prices, e-mail addresses, "?") gains
    0.2; a reply of three words or fewer ("ok", "yes sure") loses 0.2.
    """
    if role == SYSTEM:
        return 1.0
    return _IMPORTANCE[
        role if role in _ROLE_IMPORTANCE else None,
        has_fact(content),
        len(content.split(None, 4)) <= 3,  # three words or fewer (split: cheaper than a regex per message)
    ]


def policy_message(*, role: str, content: str | None, token_count: int | None,
                   importance: float | None) -> PolicyMessage:
    """Return a stored message as the policy sees it, computing what was not stored yet."""
    return PolicyMessage(
        role=role,
        token_count=token_count if token_count is not None else count_tokens(content or ""),
        importance=importance if importance is not None else importance_of(role, content or ""),
    )


def conversation_total(message_count: int, token_sum: int, policy: ContextPolicy) -> int:
    """Return ``total_context_tokens`` of a conversation of ``message_count`` messages with ``token_sum`` tokens."""
    if not message_count:
        return 0
    return token_sum + message_count * policy.per_message + policy.reply_priming


def state_from_totals(message_count: int, token_sum: int, policy: ContextPolicy) -> ContextState | None:
    """Return the context fields from the totals alone when no pruning can have happened; else None.

    The running context never exceeds the whole conversation, so one whose total fits in
    ``max_tokens`` was never pruned: no need to replay it message by message (the backfill
    replays only the rest).
    """
    total = conversation_total(message_count, token_sum, policy)
    if message_count and total > policy.max_tokens:
        return None
    return ContextState(total_context_tokens=total, context_pruned=False, pruning_count=0)


def replay(messages: Iterable[PolicyMessage], policy: ContextPolicy) -> ContextState:
    """Return the context fields of a conversation, given its messages in conversation order."""
    context: list[tuple[int, PolicyMessage]] = []  # (position, message) still in the context
    context_tokens = 0
    token_sum = 0
    count = 0
    events = 0
    for position, message in enumerate(messages):
        cost = message.token_count + policy.per_message
        token_sum += message.token_count
        count += 1
        context.append((position, message))
        context_tokens += cost
        if context_tokens + policy.reply_priming <= policy.max_tokens:
            continue
        events += 1
        protected = {pos for pos, _ in context[-policy.keep_recent:]} if policy.keep_recent else set()
        candidates = sorted(
            ((m.importance, pos) for pos, m in context if m.role != SYSTEM and pos not in protected)
        )
        by_position = dict(context)
        dropped = set()
        for _importance, pos in candidates:
            if context_tokens + policy.reply_priming <= policy.target_tokens:
                break
            dropped.add(pos)
            context_tokens -= by_position[pos].token_count + policy.per_message
        context = [(pos, m) for pos, m in context if pos not in dropped]
    return ContextState(total_context_tokens=conversation_total(count, token_sum, policy),
                        context_pruned=events > 0, pruning_count=events)
