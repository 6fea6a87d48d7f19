"""A small `CLIPTokenizer` built in code: every byte, plus one token for each listed word.

The shapes world's tokenizer (`shapes.train`) and the tiny test models' (`testing`) are made
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
    """
    characters = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({c + "</w>": len(characters) + i for i, c in enumerate(characters)})
    merges = []
    for word in dict.fromkeys(words):
        pieces = list(word)
        pieces[-1] += "</w>"
        current = pieces[0]
        for piece in pieces[1:]:
            merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
