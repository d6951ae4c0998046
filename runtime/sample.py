"""Sampling text from a character-level language model (`dlc sample`, `Model.sample`).

What a model must be (`sampling_plan`): one integer input that its output reads, ids i32[N, T]
with T a number, and an output of scores f32[N, T, V] whose step t scores the character after
step t (examples/charlm.dln: an embedding, an LSTM, a read-out per step). The vocabulary, V
characters with id i the i-th, comes with the data: an array `vocab` of single characters in the
.npz the model trains on (examples/data/make_charlm.py writes it).

How a character is drawn (`sample_text`): the last T characters so far (the prime, then what was
drawn) fill the window from the left, the rest of the window is id 0, and the scores at the last
filled step give the next character. So the model must be causal, step t reading only steps up to
t, as a forward recurrent network is: the padding after the last filled step changes nothing it
reads. The scores, divided by the temperature, go through a softmax in float64, and one uniform
number from NumPy's PCG64 seeded with `seed` picks the character by the cumulative sum: the same
seed, weights and backend give the same text. Temperature 0 takes the highest score (greedy).
Each character is one forward pass of a batch of one.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir.errors import DlcError, file_error


def vocabulary(arrays: dict, path) -> list[str]:
    """The characters of the `vocab` array of an .npz's arrays (id i is the i-th), checked."""
    v = arrays.get("vocab")
    if v is None:
        raise file_error(path, "has no array 'vocab' (the characters of the model's vocabulary, id i the i-th; "
                               "examples/data/make_charlm.py writes one)")
    if v.dtype.kind != "U" or v.ndim != 1 or not v.size or any(len(c) != 1 for c in v.tolist()):
        raise file_error(path, f"'vocab' must be a 1-D array of single characters (id i is vocab[i]), found "
                               f"{v.dtype} of shape {list(v.shape)}")
    chars = [str(c) for c in v.tolist()]
    if len(set(chars)) != len(chars):
        twice = next(c for c in chars if chars.count(c) > 1)
        raise file_error(path, f"'vocab' holds the character {twice!r} twice")
    return chars


def sampling_plan(g, output: str | None = None) -> tuple[str, int, str]:
    """(the ids input, the window length T, the output name) of a model that can be sampled."""
    meta = g.meta
    if not meta.outputs:
        raise DlcError(f"model {meta.name} has no output to sample from")
    if output is None:
        output = next(iter(meta.outputs))
    elif output not in meta.outputs:
        raise DlcError(f"'{output}' is not an output of model {meta.name} (outputs: {', '.join(meta.outputs)})")
    node = meta.outputs[output]
    reads = [n for n in g.inputs if n in g.upstream([node])]
    ids = [n for n in reads if g.type(n).dtype == "i32"]
    if not ids:
        raise DlcError(f"model {meta.name} has no integer input of character ids (i32[N, T]) that its output "
                       f"'{output}' reads, so there is nothing to sample (a character-level model such as "
                       "examples/charlm.dln has one)")
    if len(reads) > 1:
        raise DlcError(f"output '{output}' of model {meta.name} reads the inputs {', '.join(reads)}: sampling "
                       "feeds one, the character ids")
    x, t = ids[0], g.type(ids[0])
    if t.rank != 2 or not isinstance(t.shape[1], int):
        raise DlcError(f"input '{x}' : {t}: sampling needs ids i32[N, T], a window of T characters (T a number)")
    out = g.type(node)
    if out.rank != 3 or out.shape[:2] != t.shape:
        raise DlcError(f"output '{output}' : {out}: sampling needs the scores of the next character at every step "
                       f"of the window, f32[{t.shape[0]}, {t.shape[1]}, V]")
    return x, t.shape[1], output


def check_sampling(prime, length, temperature, seed, vocab: list[str], where: str, arg=str) -> list[int]:
    """The prime's ids, after checking every argument (`where` names the vocabulary's file; `arg`
    names an argument as the caller knows it: `--prime` on the command line)."""
    if not isinstance(prime, str) or not prime:
        raise DlcError(f"{arg('prime')}: give at least one character to start from (the text is continued from it)")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise DlcError(f"{arg('length')}: must be an integer >= 0, found {length!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature >= 0):
        raise DlcError(f"{arg('temperature')}: must be a number >= 0 (0: always the likeliest character), "
                       f"found {temperature!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DlcError(f"{arg('seed')}: must be an integer >= 0, found {seed!r}")
    index = {c: i for i, c in enumerate(vocab)}
    for i, c in enumerate(prime):
        if c not in index:
            raise DlcError(f"{arg('prime')}: the character {c!r} (at {i}) is not in the vocabulary of {where} "
                           f"({len(vocab)} characters: {''.join(vocab)!r})")
    return [index[c] for c in prime]


def sample_text(scores, ids: list[int], steps: int, length: int, temperature: float, seed: int,
                vocab: list[str]) -> str:
    """`length` characters drawn after the prime `ids` (see the module doc); `scores(x)` runs the
    model on ids x int32[1, steps] and gives its output [1, steps, V]."""
    rng = np.random.default_rng(seed)
    ids = list(ids)
    drawn = []
    for _ in range(length):
        window = ids[-steps:]
        x = np.zeros((1, steps), np.int32)
        x[0, :len(window)] = window          # right-padded with id 0, which a causal model's step does not read
        z = np.asarray(scores(x), np.float64)[0, len(window) - 1]
        if temperature == 0:
            nxt = int(np.argmax(z))
        else:
            p = np.exp((z - z.max()) / temperature)
            cdf = np.cumsum(p)
            nxt = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(p) - 1)
        ids.append(nxt)
        drawn.append(vocab[nxt])
    return "".join(drawn)
