"""Splitting an input by token budget: paragraphs first, then sentences, then words; order and text kept."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from control.jobs import sharding


def test_estimate_is_a_quarter_of_the_characters_rounded_up() -> None:
    assert sharding.estimate_tokens("") == 0
    assert sharding.estimate_tokens("abcd") == 1
    assert sharding.estimate_tokens("abcde") == 2


def test_short_input_is_one_chunk() -> None:
    assert sharding.split("  hello world  ", 64) == ["hello world"]


def test_paragraphs_are_packed_whole_while_they_fit() -> None:
    paras = [f"p{i} " * 20 for i in range(6)]  # ~60-80 chars each
    text = "\n\n".join(p.strip() for p in paras)
    chunks = sharding.split(text, 40)  # 160 characters: two paragraphs per chunk
    assert len(chunks) == 3
    assert all(c.count("\n\n") == 1 for c in chunks)
    assert "\n\n".join(chunks) == text


def test_a_long_paragraph_is_cut_at_sentences() -> None:
    sentences = [f"Sentence number {i} says something." for i in range(20)]  # 33-34 chars each
    chunks = sharding.split(" ".join(sentences), 25)  # 100 characters: two sentences per chunk
    assert all(len(c) <= 100 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == " ".join(sentences)


def test_a_sentence_without_breaks_is_cut_at_words_then_characters() -> None:
    chunks = sharding.split("word " * 100 + "x" * 700, 64)  # 256 characters
    assert all(len(c) <= 256 for c in chunks)
    assert "".join(chunks).replace(" ", "") == ("word" * 100 + "x" * 700)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abc .!?\n", min_size=0, max_size=120), min_size=1, max_size=30),
       st.integers(min_value=8, max_value=64))
def test_chunks_fit_the_budget_and_keep_every_character_in_order(parts: list[str], budget: int) -> None:
    text = "\n\n".join(parts)
    chunks = sharding.split(text, budget)
    assert all(0 < len(c) <= budget * sharding.CHARS_PER_TOKEN for c in chunks)
    # Only whitespace may change (at the cuts); a word longer than the budget is itself cut, so compare characters.
    assert "".join("".join(chunks).split()) == "".join(text.split())
