"""Raw lz4 blocks decoded straight into their result, without a copy;
new bytes filled in place (``fresh``).

python-lz4's ``lz4.block.decompress`` decodes into a buffer of its own
and copies that into the bytes it returns: a second pass over every MiB
restored.  The system's liblz4 (the library of the ``lz4`` tool) decodes
into a new bytes object directly, its GIL released as for any ctypes
call.  Where liblz4 cannot be loaded, ``decompress`` is None and callers
use python-lz4.

``LZ4_decompress_safe`` never reads past its input nor writes past the
capacity it is given, whatever the input: a damaged block gives an error
(a negative result) or fewer bytes than stated, both refused by the caller.
"""

from __future__ import annotations

import ctypes


class _Buffer(ctypes.Structure):      # Py_buffer (the stable buffer protocol)
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


def _load():
    try:
        lib = ctypes.CDLL("liblz4.so.1")   # (a name dlopen finds itself: no ldconfig run)
        fn = lib.LZ4_decompress_safe
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    api = ctypes.pythonapi
    new = api.PyBytes_FromStringAndSize
    new.argtypes, new.restype = [ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object
    data = api.PyBytes_AsString
    data.argtypes, data.restype = [ctypes.py_object], ctypes.c_void_p
    get = api.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int]
    get.restype = ctypes.c_int
    release = api.PyBuffer_Release
    release.argtypes, release.restype = [ctypes.POINTER(_Buffer)], None

    def decompress(block, size: int) -> bytes | None:
        """The raw block decoded into ``size`` bytes; None if it does not
        decode to exactly that many (damaged)."""
        if size <= 0 or size > 0x7E000000 or len(block) > 0x7E000000:
            return None
        out = new(None, size)              # uninitialised: every byte written below
        view = _Buffer()
        get(block, ctypes.byref(view), 0)  # PyBUF_SIMPLE: contiguous bytes
        try:
            done = fn(view.buf, data(out), view.len, size)
        finally:
            release(ctypes.byref(view))
        return out if done == size else None
    return decompress


decompress = _load()


def _fresh():
    try:
        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        data = ctypes.pythonapi.PyBytes_AsString
    except AttributeError:
        return None
    new.argtypes, new.restype = [ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object
    data.argtypes, data.restype = [ctypes.py_object], ctypes.c_void_p

    def fresh(size: int) -> tuple[bytes, memoryview]:
        """A new bytes object of ``size`` bytes, not yet initialised, and a
        writable view of it to fill at once (then only read, as bytes are)."""
        out = new(None, size)
        return out, memoryview((ctypes.c_ubyte * size).from_address(data(out))).cast("B")
    return fresh


fresh = _fresh()    # (for cryptography's update_into: its update zero-fills what it returns)
