"""A small `CLIPTokenizer` built in code: every byte, plus one token for each listed word.

The shapes world's tokenizer (`shapes.networks`) and the tiny test models' (`testing`) are made
this way: a real `CLIPTokenizer` class, with `<|startoftext|>` / `<|endoftext|>` as in CLIP,
whose vocabulary is small enough for a text encoder trained or built from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character table, which CLIP's BPE uses."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def word_tokenizer(words: Iterable[str], max_length: int = 77) -> CLIPTokenizer:
    """A `CLIPTokenizer` whose vocabulary is every byte plus whole tokens for `words`.

    Any text still tokenizes (unknown words fall back to bytes); listed words are one token.
    <|startoftext|> and <|endoftext|> are the last two ids, as in CLIP.

    Each word's merges grow it from its end: (c_{k−1}, c_k</w>), then (c_{k−2}, c_{k−1}c_k</w>), …
    Every merge has a word-final token on its right, and a word being tokenized has exactly one
    word-final token, so at each step at most one merge applies and no word's merges can
    preempt another's (merges grown from the start, (c₁, c₂) first, do: "make" has (m, a), which
    then splits "small" as s·ma·l·l).
    """
    characters = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({c + "</w>": len(characters) + i for i, c in enumerate(characters)})
    merges = {}  # ordered, without repeats (words share suffixes)
    for word in dict.fromkeys(words):
        suffix = word[-1] + "</w>"
        for character in reversed(word[:-1]):
            merges.setdefault((character, suffix))
            suffix = character + suffix
            vocab.setdefault(suffix, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=max_length)
