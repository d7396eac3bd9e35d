"""Open a GGUF file by memory map: metadata, tensor directory, zero-copy tensor views.

gguf-py's GGUFReader builds a numpy view for every field and string, which costs about
1.4 s for a 32k vocabulary. This parser walks the header once with struct and keeps
numeric arrays as views of the map, so opening a large file takes milliseconds and
copies no weight byte.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ggml_types import BLOCK_SIZES, GGMLType

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32


class GGUFError(ValueError):
    """The file is not a valid GGUF file, or not one mixlocal can run."""


# GGUF value types: code -> (struct format, numpy dtype)
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: outermost first, ne0 (the row) last
    qtype: GGMLType
    offset: int  # absolute offset in the file
    nbytes: int


class _Cursor:
    """Reads little-endian GGUF values from a buffer, checking every bound."""

    def __init__(self, buf, pos: int = 0):
        self.buf, self.pos, self.end = buf, pos, len(buf)

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.end:
            raise GGUFError("file is truncated (header runs past the end of the file)")
        self.pos = start + n
        return start

    def scalar(self, code: int):
        fmt, _ = _SCALARS[code]
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return self.scalar(4)

    def u64(self) -> int:
        return self.scalar(10)

    def string(self) -> str:
        n = self.u64()
        start = self.take(n)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def value(self, code: int) -> Any:
        if code in _SCALARS:
            return self.scalar(code)
        if code == _STRING:
            return self.string()
        if code == _ARRAY:
            return self.array()
        raise GGUFError(f"unknown metadata value type {code}")

    def array(self):
        code, count = self.u32(), self.u64()
        if code in _SCALARS:
            dtype = np.dtype(_SCALARS[code][1])
            start = self.take(count * dtype.itemsize)
            # A view of the map: token scores and types of a 32k vocabulary cost nothing.
            return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start)
        if count > self.end:  # each element takes at least one byte
            raise GGUFError("file is truncated (array runs past the end of the file)")
        if code == _STRING:
            return self.strings(count)
        return [self.value(code) for _ in range(count)]

    def strings(self, count: int) -> list[str]:
        # The vocabulary's tens of thousands of strings: one tight loop, no calls per item.
        buf, pos, end = self.buf, self.pos, self.end
        unpack, out = struct.Struct("<Q").unpack_from, []
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                if pos + n > end:
                    raise struct.error
                out.append(str(buf[pos:pos + n], "utf-8", "replace"))
                pos += n
        except struct.error:
            raise GGUFError("file is truncated (string array runs past the end of the "
                            "file)") from None
        self.pos = pos
        return out


def _advise_huge_pages(m: mmap.mmap) -> None:
    """Ask Linux to read the file into 2 MiB page-cache folios and map them whole.
    Decoding streams every chosen expert's weights: one core reads a map of 4 KiB
    pages at about 23 GB/s here, of 2 MiB pages at 32. Pages already cached keep
    their size; kernels without huge file pages ignore the advice."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
    if advice is not None:
        try:
            m.madvise(advice)
        except OSError:
            pass


class GGUFFile:
    """A GGUF file opened read-only by memory map.

    `metadata` maps keys to Python values (numeric arrays are read-only numpy views);
    `tensors` maps names to TensorInfo; `tensor_data(name)` is a zero-copy view.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 24:
                    raise GGUFError(f"{self.path} is not a GGUF file (only {size} bytes)")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                _advise_huge_pages(self._map)
        except OSError as e:
            raise GGUFError(f"cannot read {self.path}: {e.strerror or e}") from None
        self.file_size = size
        self._buf = memoryview(self._map)
        self._parse()

    def _parse(self) -> None:
        if bytes(self._buf[:4]) != GGUF_MAGIC:
            raise GGUFError(f"{self.path} is not a GGUF file (bad magic)")
        cur = _Cursor(self._buf, 4)
        self.version = cur.u32()
        if self.version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {self.version} (expected 2 or 3)")
        n_tensors, n_kv = cur.u64(), cur.u64()
        if n_tensors > self.file_size or n_kv > self.file_size:
            raise GGUFError("corrupt GGUF header (impossible tensor or key count)")

        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.u32())

        raw = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if n_dims > 4:
                raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (at most 4)")
            dims = [cur.u64() for _ in range(n_dims)]
            raw.append((name, dims, cur.u32(), cur.u64()))

        align = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if align <= 0 or align & (align - 1):
            raise GGUFError(f"invalid general.alignment {align}")
        data_start = -(-cur.pos // align) * align

        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, code, rel in raw:
            try:
                qtype = GGMLType(code)
                block, bsize = BLOCK_SIZES[qtype]
            except (ValueError, KeyError):
                raise GGUFError(f"tensor {name!r} has unknown type code {code}") from None
            n = int(np.prod(dims, dtype=np.uint64)) if dims else 1
            if dims and dims[0] % block:
                raise GGUFError(f"tensor {name!r}: row of {dims[0]} is not a whole number "
                                f"of {qtype.name} blocks ({block})")
            nbytes = n // block * bsize
            offset = data_start + rel
            if offset + nbytes > self.file_size:
                raise GGUFError(f"file is truncated: tensor {name!r} ends past the end of "
                                f"the file ({offset + nbytes} > {self.file_size} bytes)")
            if name in self.tensors:
                raise GGUFError(f"tensor {name!r} appears twice")
            self.tensors[name] = TensorInfo(name, tuple(reversed(dims)), qtype, offset, nbytes)

    def tensor_data(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor as a read-only uint8 view of shape (..., row_bytes)."""
        t = self.tensors[name]
        block, bsize = BLOCK_SIZES[t.qtype]
        shape = t.shape[:-1] + (t.shape[-1] // block * bsize,) if t.shape else (bsize,)
        return np.frombuffer(self._buf, np.uint8, t.nbytes, t.offset).reshape(shape)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def close(self) -> None:
        self._buf.release()
        self._map.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
