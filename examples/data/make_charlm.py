"""Make the data file of the character-level language model (examples/charlm.dln) from
examples/data/charlm.txt, a short story written for this project (about 4 KB of plain English,
lower case):

    charlm.npz   x int32 [W, T] with T = 16: the text cut into windows of T characters, as
                 character ids, in the order of the text;
                 y int32 [W, T]: the id of the character after each one (x shifted by one);
                 vocab <U1 [V]: the characters, id i is vocab[i] (sorted, so a newline is id 0
                 and a space id 1). `dlc sample` reads it to turn a prime into ids and ids back
                 into text.

The text's single line breaks become spaces and each blank line one newline, so the vocabulary is
the paragraph break, the space, ',', '.' and the letters used. No two windows overlap: the
held-out fifth of `train(val_split = 0.2)` (windows drawn at random) is text that no training
window holds, apart from the one character after each window, which is its last target and the
next window's first input.

Run from anywhere: python examples/data/make_charlm.py
"""
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS = 16   # characters a window holds (the .dln's T)
STRIDE = 16  # characters between the starts of two windows: STEPS, so that none overlap


def read_text(path=HERE / "charlm.txt") -> str:
    paragraphs = path.read_text(encoding="utf-8").strip().split("\n\n")
    return "\n".join(" ".join(p.split()) for p in paragraphs)


def windows(text: str, steps=STEPS, stride=STRIDE):
    vocab = sorted(set(text))
    ids = np.array([vocab.index(c) for c in text], np.int32)
    starts = np.arange(0, len(ids) - steps, stride)
    x = np.stack([ids[s:s + steps] for s in starts])
    y = np.stack([ids[s + 1:s + steps + 1] for s in starts])
    return x, y, np.array(vocab)


def main():
    x, y, vocab = windows(read_text())
    np.savez_compressed(HERE / "charlm.npz", x=x, y=y, vocab=vocab)
    print(f"charlm.npz: x {x.shape}, y {y.shape}, {len(vocab)} characters: {''.join(vocab)!r}")


if __name__ == "__main__":
    main()
