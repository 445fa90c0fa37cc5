"""Split a long input into chunks of at most `token_budget` estimated tokens, on paragraph then sentence boundaries.

The token estimate is deliberately simple and tokenizer-free: ceil(characters / 4), the usual average for English
text under BPE tokenizers (GPT/Llama/DeepSeek vocabularies give 3.5–4.5 characters per token on prose). It is an
estimate for sizing chunks, not a billing figure; leave headroom in the budget for the model's context.

Order of cuts: paragraphs (blank lines) are packed greedily into a chunk while they fit; a paragraph larger than the
budget is cut into sentences (after . ! ? followed by whitespace) packed the same way; a sentence larger than the
budget is cut at whitespace, and a single word larger than the budget at the character limit.
"""

from __future__ import annotations

import math
import re

CHARS_PER_TOKEN = 4
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _pack(pieces: list[str], limit: int, sep: str) -> list[str]:
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}{sep}{piece}" if current else piece
        if len(candidate) <= limit:
            current = candidate
        else:
            if current:
                chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def _words(text: str, limit: int) -> list[str]:
    pieces: list[str] = []
    for word in text.split():
        pieces.extend(word[i:i + limit] for i in range(0, len(word), limit))
    return _pack(pieces, limit, " ")


def split(text: str, token_budget: int) -> list[str]:
    """Chunks in input order, each at most token_budget * 4 characters; never empty for a non-blank input."""
    limit = token_budget * CHARS_PER_TOKEN
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    pieces: list[str] = []
    for para in (p.strip() for p in _PARAGRAPH.split(text)):
        if not para:
            continue
        if len(para) <= limit:
            pieces.append(para)
            continue
        # Sentences of one over-long paragraph are packed among themselves (joined by a space), then the packed
        # parts join the paragraph stream; their own sentence packing is already within the limit.
        sentences: list[str] = []
        for sentence in _SENTENCE.split(para):
            sentences.extend([sentence] if len(sentence) <= limit else _words(sentence, limit))
        pieces.extend(_pack(sentences, limit, " "))
    return _pack(pieces, limit, "\n\n")
