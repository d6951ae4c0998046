"""Make the two data files of the transfer-learning example from digits.npz:

    digits_0to4.npz   the images of digits 0-4, labels 0..4       (examples/transfer_base.dln)
    digits_5to9.npz   the images of digits 5-9, labels 5..9 -> 0..4 (examples/transfer_finetune.dln)

Each holds `x` (float32 [n, 64], scaled to [0, 1] as in digits.npz) and `y` (int32), in the order of
digits.npz (already shuffled), compressed. Run from anywhere: python examples/data/make_transfer.py
"""
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    with np.load(HERE / "digits.npz") as z:
        x, y = z["x"], z["y"]
    for name, lo in (("digits_0to4.npz", 0), ("digits_5to9.npz", 5)):
        keep = (y >= lo) & (y < lo + 5)
        np.savez_compressed(HERE / name, x=x[keep].astype(np.float32), y=(y[keep] - lo).astype(np.int32))
        print(f"wrote {HERE / name}: {int(keep.sum())} images of digits {lo}-{lo + 4}, labels 0..4")


if __name__ == "__main__":
    main()
