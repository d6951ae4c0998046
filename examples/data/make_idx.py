"""Make the digits in MNIST's IDX format, for the README's `--data ... --labels ...` line:

    digits-images-idx3-ubyte.gz   1797 images, uint8 [1797, 8, 8], grey levels 0..255
    digits-labels-idx1-ubyte.gz   their labels, uint8 0..9

from digits.npz (x scaled to [0, 1]: the original 0..16 grey levels / 16) as pixels x * 255,
rounded, so that `--normalize scale` (uint8 / 255) gives back digits.npz's x to within 1/510.
The format, as the MNIST page defines it: two zero bytes, the element type (0x08: unsigned byte),
the rank, each dimension as a big-endian uint32, then the values; gzipped (gzip's time stamp set to
0, so that the files are the same on every run). Run from anywhere: python examples/data/make_idx.py
"""
import gzip
import struct
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_idx(path: Path, a: np.ndarray) -> None:
    raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as z:
        z.write(raw)


def main() -> None:
    with np.load(HERE / "digits.npz") as z:
        x, y = z["x"], z["y"]
    pixels = np.round(x * 255).astype(np.uint8).reshape(len(x), 8, 8)
    write_idx(HERE / "digits-images-idx3-ubyte.gz", pixels)
    write_idx(HERE / "digits-labels-idx1-ubyte.gz", y.astype(np.uint8))
    print(f"wrote {len(x)} images and labels in IDX format to {HERE}")


if __name__ == "__main__":
    main()
