"""Arrays on disk that read back row by row (NpyFile, DiskCSR), and the writers that fill them block by block."""

from __future__ import annotations

import math
import os
import weakref
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError

_COUNTS_FILES = ("counts_data.npy", "counts_indices.npy", "counts_indptr.npy")


class NpyFile:
    """A ``.npy`` array on disk whose rows are read when indexed, with positioned reads (``os.pread``).

    ``a[i]``, ``a[start:stop]``, ``a[rows]`` (integer or boolean array) and ``a[rows, columns]`` read only
    those rows; ``np.asarray(a)`` reads everything. Only C-ordered arrays without Python objects.

    Not a memory map on purpose: the pages of a mapped file that a process touches count towards its
    resident set, and with the kernel's fault-around and large page-cache folios each random row maps much
    more than itself (8,000 random 1 kB rows of a 1 GB map made 780 MB resident on our 2-core test VM), so
    the memory of a training run would grow with the corpus. Reads go through the page cache only.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            self._offset = handle.tell()
        if fortran_order or dtype.hasobject or len(shape) == 0:
            raise ValueError(f"{self.path} holds a Fortran-ordered, object or 0-d array; it cannot be read by rows")
        self.shape, self.dtype = tuple(shape), dtype
        self._row_bytes = dtype.itemsize * math.prod(shape[1:])
        self._open()

    def _open(self) -> None:
        # Open now, not at the first read: the open file stays readable even if its name is removed meanwhile.
        self._descriptor = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._descriptor)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            out = self._read(start, max(start, stop)) if step == 1 else self._read_rows(np.arange(start, stop, step))
            leading = (slice(None),)
        elif isinstance(rows, (int, np.integer)):
            row = self._check_rows(np.asarray(rows))
            out, leading = self._read(int(row), int(row) + 1)[0], ()
        else:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                if rows.shape != (len(self),):
                    raise IndexError(f"boolean index of shape {rows.shape} for {len(self)} rows")
                rows = np.flatnonzero(rows)
            rows = self._check_rows(rows)
            out = self._read_rows(rows.ravel()).reshape(rows.shape + self.shape[1:])
            leading = (slice(None),) * rows.ndim
        return out[leading + rest] if rest else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        everything = self._read(0, len(self))
        return everything if dtype is None else everything.astype(dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptor": None}  # a file descriptor means nothing in another process

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def _check_rows(self, rows: np.ndarray) -> np.ndarray:
        """Integer rows with negative ones counted from the end, or an IndexError."""
        if rows.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, got dtype {rows.dtype}")
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.path}")
        return rows

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` in one read."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        self._read_into(out.reshape(-1).view(np.uint8), start)
        return out

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), ...)`` rows in the given order, one read per row."""
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        row_bytes = out.reshape(-1).view(np.uint8).reshape(rows.size, self._row_bytes)
        for i, row in enumerate(rows.tolist()):
            self._read_into(row_bytes[i], row)
        return out

    def _read_into(self, buffer: np.ndarray, first_row: int) -> None:
        """Fill the uint8 ``buffer`` from the bytes of the rows starting at ``first_row``."""
        offset, view, done = self._offset + first_row * self._row_bytes, buffer.data, 0
        while done < len(view):  # a read may return less than asked for
            n_read = os.preadv(self._descriptor, [view[done:]], offset + done)
            if n_read == 0:
                raise SctraceInputError(f"{self.path} is shorter than its header says; re-run `sctrace fit`.")
            done += n_read


class DiskCSR:
    """A CSR matrix stored as ``counts_data``, ``counts_indices`` and ``counts_indptr`` ``.npy`` files in a directory.

    ``m[rows]`` reads only those rows (an integer array) and returns them as a scipy CSR matrix, so a batch
    of training cells costs a few reads and memory for the batch alone (see :class:`NpyFile`).
    """

    def __init__(self, directory: str | os.PathLike, n_columns: int):
        directory = Path(directory)
        self.data, self.indices, self.indptr = (NpyFile(directory / name) for name in _COUNTS_FILES)
        self.shape = (len(self.indptr) - 1, n_columns)

    def __getitem__(self, rows) -> sp.csr_matrix:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        starts, stops = self.indptr[rows].tolist(), self.indptr[rows + 1].tolist()
        data = [self.data[start:stop] for start, stop in zip(starts, stops)]
        indices = [self.indices[start:stop] for start, stop in zip(starts, stops)]
        indptr = np.concatenate(([0], np.cumsum(np.subtract(stops, starts), dtype=np.int64)))
        return sp.csr_matrix(
            (np.concatenate(data or [self.data[0:0]]), np.concatenate(indices or [self.indices[0:0]]), indptr),
            shape=(rows.size, self.shape[1]),
        )


class _NpyWriter:
    """Writes a ``.npy`` file block of rows by block of rows; the header, with the final shape, comes last.

    Plain writes, not a writable memory map: written pages of a map stay in the writing process's resident
    set until it is unmapped, so the peak memory would grow with the corpus.
    """

    header_bytes = 128  # room for any 1-d or 2-d header; .npy headers are padded to a multiple of 64 bytes

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape, self.n_rows = path, np.dtype(dtype), tuple(row_shape), 0
        self.handle = open(path, "wb")
        self.handle.write(bytes(self.header_bytes))

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {block.shape[1:]} for {self.path}, which holds rows of shape {self.row_shape}")
        self.handle.write(block.data)
        self.n_rows += len(block)

    def finish(self) -> NpyFile:
        shape = (self.n_rows, *self.row_shape)
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}).encode("latin1")
        room = self.header_bytes - len(np.lib.format.magic(1, 0)) - 2
        if len(text) >= room:
            raise ValueError(f"the .npy header of {self.path} needs more than {self.header_bytes} bytes: {text!r}")
        self.handle.seek(0)
        self.handle.write(np.lib.format.magic(1, 0) + room.to_bytes(2, "little") + text.ljust(room - 1) + b"\n")
        self.handle.close()
        return NpyFile(self.path)


class _ArrayCollector:
    """The in-memory counterpart of :class:`_NpyWriter`: keeps the blocks and joins them at the end."""

    def __init__(self, dtype, row_shape: tuple[int, ...] = ()):
        self.dtype, self.blocks = np.dtype(dtype), [np.empty((0, *row_shape), dtype=dtype)]

    def append(self, block: np.ndarray) -> None:
        self.blocks.append(np.asarray(block, dtype=self.dtype))

    def finish(self) -> np.ndarray:
        return np.concatenate(self.blocks)
