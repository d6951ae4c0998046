"""Make the data files of the sequence examples (fixed seeds, so the files are reproducible):

    sine.npz     next-value prediction of a noisy sine wave (examples/sine.dln):
                 x float32 [2000, 20, 1], 20 noisy samples of sin(2 pi t / P + phase) with a period P
                 drawn from [12, 30] steps and noise of standard deviation 0.1; y float32 [2000, 1],
                 the noisy value of the step after the window
    adding.npz   the adding problem (Hochreiter & Schmidhuber, 1997; examples/adding_*.dln):
                 x float32 [4000, T, 2] with T = 40: channel 0 holds numbers drawn uniformly from
                 [0, 1], channel 1 marks two steps with 1 (one in each half of the sequence);
                 y float32 [4000, 1], the sum of the two marked numbers. Predicting the mean, 1,
                 scores a mean squared error of 1/6; a network must carry a marked number across up
                 to T steps to do better.

Run from anywhere: python examples/data/make_sequences.py
"""
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def sine(n=2000, steps=20, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    period = rng.uniform(12, 30, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    t = np.arange(steps + 1)[None, :]
    wave = np.sin(2 * np.pi * t / period + phase) + noise * rng.normal(size=(n, steps + 1))
    return wave[:, :steps, None].astype(np.float32), wave[:, steps:].astype(np.float32)


def adding(n=4000, steps=40, seed=1):
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, (n, steps))
    marks = np.zeros((n, steps))
    first = rng.integers(0, steps // 2, n)
    second = rng.integers(steps // 2, steps, n)
    marks[np.arange(n), first] = 1
    marks[np.arange(n), second] = 1
    x = np.stack([values, marks], axis=2).astype(np.float32)
    y = (values * marks).sum(axis=1, keepdims=True).astype(np.float32)
    return x, y


def main() -> None:
    for name, (x, y) in (("sine.npz", sine()), ("adding.npz", adding())):
        np.savez_compressed(HERE / name, x=x, y=y)
        print(f"wrote {HERE / name}: x {x.dtype}{list(x.shape)}, y {y.dtype}{list(y.shape)}")


if __name__ == "__main__":
    main()
