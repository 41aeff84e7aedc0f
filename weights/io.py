"""Reading and writing weight files: safetensors in, safetensors out, nothing unpickled.

A safetensors file is plain data, so reading one cannot run code:

    bytes 0..8        N, the header's length (unsigned 64-bit, little-endian)
    bytes 8..8+N      a JSON header: {name: {"dtype": "F16", "shape": [320, 4, 3, 3],
                                             "data_offsets": [begin, end]}, "__metadata__": {...}}
    bytes 8+N..       the tensors' raw bytes, each at its [begin, end) of this data section

A pickled PyTorch file (``.ckpt``, ``.pt``, ``.bin``) is a program for Python's unpickler and
may run any code when loaded. :func:`read_weights` refuses it unless the caller opts in with
``allow_pickle_weights_only=True``, and even then reads it only through
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers and
refuses every other object.

Writes are atomic (weights/atomic.py): the data goes to a temporary file in the destination
folder, which then replaces the destination in one ``os.replace``. A crash leaves the old file or
the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import shlex
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_file

PathLike = str | os.PathLike
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; a bare pickle (protocol >= 2)


class WeightsFileError(ValueError):
    """A weights or config file is missing, truncated, or not in the expected format."""


def _existing_file(path: PathLike, expected: str) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise WeightsFileError(f"{path} {what}; expected {expected}")
    return path


def _convert_hint(path: Path) -> str:
    """How to convert a pickled file. The paths are shell-quoted arguments of the one-liner, never
    part of its code, so a file named ``$(touch X).ckpt`` cannot run anything when the line is pasted."""
    target = path.with_suffix(".converted.safetensors" if path.suffix == ".safetensors" else ".safetensors")
    code = ("import sys, torch, safetensors.torch as st; "
            "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
            "st.save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])")
    return (
        f"{path} is a pickled PyTorch file, not safetensors. This project does not unpickle weights by "
        f"default. Convert it once:\n"
        f"  python -c {shlex.quote(code)} {shlex.quote(str(path))} {shlex.quote(str(target))}\n"
        f"or pass allow_pickle_weights_only=True to read it with torch.load(weights_only=True)."
    )


def is_pickled(path: PathLike) -> bool:
    """True for torch.save's zip or a bare pickle; False for safetensors, even one whose length byte is 0x80."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not any(head.startswith(m) for m in PICKLE_MAGICS):
        return False
    n = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else 0
    looks_safetensors = 0 < n <= Path(path).stat().st_size - 8 and head[8:9] == b"{"
    return not looks_safetensors


def read_safetensors_header(path: PathLike) -> dict[str, Any]:
    """Parse and check a safetensors header without reading any tensor data.

    Returns ``{name: {"dtype", "shape", "data_offsets"}}`` (and ``"__metadata__"`` if present).
    Raises :class:`WeightsFileError` for a missing, truncated or non-safetensors file; for a
    pickled file the message says how to convert it.
    """
    path = _existing_file(path, "a .safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        raw = f.read(n) if n <= MAX_HEADER_BYTES else b""  # a text file's or a zip's "length" is absurd
    try:
        header = json.loads(raw) if raw.startswith(b"{") else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        if raw.startswith(b"{") and n <= MAX_HEADER_BYTES and size < 8 + n:
            raise WeightsFileError(f"{path} is truncated: its header claims {n} bytes but the file has {size}")
        if is_pickled(path):
            raise WeightsFileError(_convert_hint(path))
        raise WeightsFileError(
            f"{path} is not a safetensors file ({size} bytes, starting {prefix[:8]!r}); expected an 8-byte "
            f"header length followed by a JSON header"
        )
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise WeightsFileError(f"{path}: the header's __metadata__ must map str -> str, got {metadata!r:.200}")
    end = 0
    for name, entry in tensors.items():
        end = max(end, _check_entry(path, name, entry))
    if size < 8 + n + end:
        raise WeightsFileError(
            f"{path} is truncated: its header describes {8 + n + end} bytes of tensors, the file has {size}"
        )
    return header


# safetensors' dtype names and their sizes in bytes
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}
MAX_DIMS = 8
MAX_ELEMENTS = 2**40  # far above any model here; a header claiming more is damaged


def _check_entry(path: Path, name: str, entry: Any) -> int:
    """One tensor's header entry: a known dtype, a shape of at most MAX_DIMS non-negative ints, and
    data_offsets [begin, end] whose span is exactly the tensor's bytes. Returns end."""
    def bad(why: str) -> WeightsFileError:
        return WeightsFileError(f"{path}: the header entry of tensor {name!r} is malformed: {why} "
                                f"(got {entry!r:.200}); the file is damaged or not a weights file")

    if not isinstance(entry, dict):
        raise bad("expected an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise bad(f"dtype must be one of {sorted(DTYPE_BYTES)}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
            not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ELEMENTS for d in shape):
        raise bad(f"shape must be a list of at most {MAX_DIMS} non-negative ints")
    count = 1
    for d in shape:
        count *= d
    if count > MAX_ELEMENTS:
        raise bad(f"the shape has {count} elements, more than {MAX_ELEMENTS}")
    if not isinstance(offsets, list) or len(offsets) != 2 or \
            not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets) or offsets[0] > offsets[1]:
        raise bad("data_offsets must be [begin, end] with 0 <= begin <= end")
    if offsets[1] - offsets[0] != count * DTYPE_BYTES[dtype]:
        raise bad(f"data_offsets span {offsets[1] - offsets[0]} bytes, but a {dtype} tensor of shape {shape} "
                  f"takes {count * DTYPE_BYTES[dtype]}")
    return offsets[1]


def read_safetensors_shapes(path: PathLike) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, from the header alone (cheap even for a 4 GB file)."""
    header = read_safetensors_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """fp16/bf16 weights become fp32 (or ``dtype``); integer buffers (position ids) keep theirs."""
    return t.to(dtype) if dtype is not None and t.is_floating_point() and t.dtype != dtype else t


def _owned(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A cast copy, or a clone: never a view of the file's memory mapping."""
    cast = _cast(t, dtype)
    return cast if cast is not t else t.clone()


def read_safetensors(path: PathLike, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file, floating ones cast to ``dtype`` (None: as stored).

    The tensors own their memory. (safetensors hands out views of a private mapping of the file,
    which change or crash with SIGBUS if the file is later rewritten in place.)
    """
    read_safetensors_header(path)  # clear errors first: missing, truncated, pickled, not safetensors
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: _owned(f.get_tensor(k), dtype) for k in f.keys()}
    except SafetensorError as e:
        raise WeightsFileError(f"{path} could not be read as safetensors: {e}") from e


def read_weights(
    path: PathLike, dtype: torch.dtype | None = torch.float32, allow_pickle_weights_only: bool = False
) -> dict[str, torch.Tensor]:
    """Read a safetensors file; or, only when asked, a pickled checkpoint with ``weights_only=True``.

    An original SD ``.ckpt`` holds ``{"state_dict": {...}, "global_step": ...}``; its
    ``state_dict`` is returned. Anything that is not a tensor, or that the restricted
    unpickler refuses (an arbitrary object), is an error.
    """
    path = _existing_file(path, "a .safetensors (or, opted in, a pickled .ckpt) weights file")
    if not is_pickled(path):
        return read_safetensors(path, dtype)
    if not allow_pickle_weights_only:
        raise WeightsFileError(_convert_hint(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler raises UnpicklingError and friends
        raise WeightsFileError(f"{path}: torch.load(weights_only=True) refused it: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsFileError(f"{path} holds a {type(obj).__name__}; expected a dict of tensors")
    bad = sorted(str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    if bad:
        raise WeightsFileError(f"{path}: entries that are not str -> tensor: {bad[:10]}")
    return {k: _cast(v, dtype) for k, v in obj.items()}


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to ``path`` atomically (contiguous, on the CPU)."""
    bad = sorted(str(k) for k, v in tensors.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
    if bad:
        raise ValueError(f"write_safetensors needs str -> torch.Tensor; these entries are not: {bad[:10]}")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"safetensors metadata must map str -> str, got {dict(metadata)!r}")
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_file(path) as tmp:
        save_file(data, str(tmp), metadata=dict(metadata) if metadata is not None else None)


def write_json(obj: Mapping[str, Any], path: PathLike) -> None:
    """Write a JSON object (a config) atomically, indented, with a trailing newline."""
    text = json.dumps(obj, indent=2) + "\n"  # serialise first: a TypeError leaves no file behind
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def read_json(path: PathLike) -> dict[str, Any]:
    """Read a JSON object (a config), naming the file in every error."""
    path = _existing_file(path, "a JSON config file")
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise WeightsFileError(f"{path} holds a JSON {type(obj).__name__}; expected a JSON object")
    return obj
