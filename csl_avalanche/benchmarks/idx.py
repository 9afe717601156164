"""The IDX file format of (Fashion-)MNIST, read without torchvision.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian int32 per dimension, then the values in C order. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from csl_avalanche.core.errors import ConfigError

# type code -> (big-endian numpy dtype, name)
IDX_TYPES = {
    0x08: (np.dtype(">u1"), "unsigned byte"),
    0x09: (np.dtype(">i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ConfigError):
    """A file that is not a well-formed IDX file (or not the IDX file that was expected)."""


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """The array stored in an IDX file (plain or gzip), as a tensor of the file's shape."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise IdxFormatError(f"{path} is a damaged gzip file ({err})") from None
    if len(raw) < 4:
        raise IdxFormatError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    zero0, zero1, type_code, ndim = raw[:4]
    if zero0 or zero1 or type_code not in IDX_TYPES or ndim == 0:
        raise IdxFormatError(
            f"{path} is not an IDX file: magic number {raw[:4].hex()} should be 0000TTNN "
            f"(TT a type code in {sorted(f'{t:02x}' for t in IDX_TYPES)}, NN the number of "
            "dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path} ends inside its header ({ndim} dimensions announced)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype, type_name = IDX_TYPES[type_code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path} announces {list(shape)} {type_name} values ({expected} bytes) but holds "
            f"{len(raw) - header} bytes of data; the file is truncated or corrupt"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | os.PathLike[str], array: np.ndarray | torch.Tensor) -> None:
    """Write `array` as an IDX file, gzip-compressed when `path` ends in `.gz` (tests, tools)."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, (dtype, _) in IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"IDX cannot store {array.dtype}")
    code = codes[native]
    data = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">i4").tobytes()
        + array.astype(IDX_TYPES[code][0]).tobytes()
    )
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
