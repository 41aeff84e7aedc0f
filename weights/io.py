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

Writes are atomic: the data goes to a temporary file in the destination folder, which then
replaces the destination in one ``os.replace``. A crash leaves the old file or the new one,
never half of one.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

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
    target = path.with_suffix(".converted.safetensors" if path.suffix == ".safetensors" else ".safetensors")
    return (
        f"{path} is a pickled PyTorch file, not safetensors. This project does not unpickle weights by "
        f"default. Convert it once:\n"
        f"  python -c \"import torch, safetensors.torch as st; "
        f"sd = torch.load('{path}', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
        f"st.save_file({{k: v.contiguous() for k, v in sd.items()}}, '{target}')\"\n"
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
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise WeightsFileError(f"{path} has a malformed safetensors header ({e!r})") from e
    if size < 8 + n + end:
        raise WeightsFileError(
            f"{path} is truncated: its header describes {8 + n + end} bytes of tensors, the file has {size}"
        )
    return header


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


@contextmanager
def _atomic_target(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a weights file is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    with _atomic_target(path) as tmp:
        save_file(data, str(tmp), metadata=dict(metadata) if metadata is not None else None)


def write_json(obj: Mapping[str, Any], path: PathLike) -> None:
    """Write a JSON object (a config) atomically, indented, with a trailing newline."""
    text = json.dumps(obj, indent=2) + "\n"  # serialise first: a TypeError leaves no file behind
    with _atomic_target(path) as tmp:
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
