"""weights/io.py: safetensors in and out, fp16/bf16 cast, atomic writes, pickles refused."""
from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from weights.io import (
    WeightsFileError, is_pickled, read_json, read_safetensors, read_safetensors_shapes, read_weights, write_json,
    write_safetensors,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g),
        "position_ids": torch.arange(77)[None],  # an integer buffer, as in CLIP: never cast
    }


def test_roundtrip_is_exact_and_keeps_metadata(tmp_path):
    tensors = _tensors()
    tensors["transposed"] = torch.randn(3, 5).t()  # not contiguous: written contiguous
    write_safetensors(tensors, tmp_path / "a.safetensors", metadata={"format": "pt"})
    back = read_safetensors(tmp_path / "a.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert read_safetensors_shapes(tmp_path / "a.safetensors")["conv.weight"] == (8, 4, 3, 3)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_is_cast_to_fp32_by_default(tmp_path, half):
    stored = {k: (v.to(half) if v.is_floating_point() else v) for k, v in _tensors().items()}
    save_file(stored, str(tmp_path / "h.safetensors"))
    back = read_safetensors(tmp_path / "h.safetensors")
    assert back["conv.weight"].dtype == torch.float32
    # fp16 and bf16 values are exactly representable in fp32: the cast loses nothing.
    assert torch.equal(back["conv.weight"], stored["conv.weight"].float())
    assert back["position_ids"].dtype == torch.int64 and torch.equal(back["position_ids"], stored["position_ids"])
    kept = read_safetensors(tmp_path / "h.safetensors", dtype=None)
    assert kept["conv.weight"].dtype == half and torch.equal(kept["conv.weight"], stored["conv.weight"])


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(WeightsFileError, match=r"nope\.safetensors does not exist; expected a \.safetensors file"):
        read_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsFileError, match="is a folder"):
        read_safetensors(tmp_path)


def test_truncated_data_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(_tensors(), path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(WeightsFileError, match=r"t\.safetensors is truncated: its header describes \d+ bytes"):
        read_safetensors(path)


def test_truncated_header_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(_tensors(), path)
    path.write_bytes(path.read_bytes()[:40])  # cut inside the JSON header
    with pytest.raises(WeightsFileError, match=r"is truncated: its header claims \d+ bytes but the file has 40"):
        read_safetensors(path)


def test_text_file_is_not_safetensors(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not weights, just a text file\n")
    with pytest.raises(WeightsFileError, match=r"notes\.safetensors is not a safetensors file"):
        read_safetensors(path)


def test_malformed_header_is_refused(tmp_path):
    header = b'{"w": {"dtype": "F32"}}'
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(WeightsFileError, match="the header entry of tensor 'w' is malformed"):
        read_safetensors(tmp_path / "m.safetensors")


@pytest.mark.parametrize("name", ["model.ckpt", "pytorch_model.bin", "disguised.safetensors"])
def test_pickle_is_refused_with_how_to_convert(tmp_path, name):
    torch.save({"state_dict": _tensors()}, tmp_path / name)
    assert is_pickled(tmp_path / name)
    # The message is a runnable one-liner: torch.load(weights_only=True), then safetensors' save_file.
    hint = (r"(?s)pickled PyTorch file, not safetensors.*weights_only=True.*st\.save_file"
            r".*allow_pickle_weights_only=True")
    with pytest.raises(WeightsFileError, match=hint):
        read_safetensors(tmp_path / name)
    with pytest.raises(WeightsFileError, match=hint):
        read_weights(tmp_path / name)


def test_legacy_pickle_is_refused_too(tmp_path):
    torch.save(_tensors(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # starts with \x80\x02
    with pytest.raises(WeightsFileError, match="pickled PyTorch file"):
        read_weights(tmp_path / "old.pt")


def test_pickle_opt_in_reads_tensors_only(tmp_path):
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in _tensors().items()}
    torch.save({"state_dict": tensors, "global_step": 470000}, tmp_path / "sd.ckpt")  # an original .ckpt's shape
    back = read_weights(tmp_path / "sd.ckpt", allow_pickle_weights_only=True)
    assert set(back) == set(tensors)
    assert back["conv.weight"].dtype == torch.float32
    assert torch.equal(back["conv.weight"], tensors["conv.weight"].float())


class _Payload:
    """Unpickling this object would run os.mkdir(marker): what an attacker's checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickle_opt_in_never_unpickles_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Payload(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsFileError, match=r"evil\.ckpt: torch\.load\(weights_only=True\) refused it"):
        read_weights(tmp_path / "evil.ckpt", allow_pickle_weights_only=True)
    assert not marker.exists()


def test_safetensors_whose_length_byte_looks_like_pickle(tmp_path):
    # A header of 640 = 0x280 bytes starts the file with b"\x80\x02", pickle protocol 2's opcode.
    # Pad the metadata until safetensors writes exactly that header (it pads to 8 bytes).
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={"pad": ""})
    start = 640 - struct.unpack("<Q", path.read_bytes()[:8])[0] - 8  # within 8 bytes of the target length
    for pad in range(start, start + 16):
        save_file({"w": torch.ones(3)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert not is_pickled(path)
    assert torch.equal(read_weights(path)["w"], torch.ones(3))


def test_write_is_atomic(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(_tensors(), path)
    before = path.read_bytes()
    shared = torch.zeros(4)
    # safetensors refuses tensors sharing memory: the write fails after the temporary file exists.
    with pytest.raises(Exception, match="share"):
        write_safetensors({"a": shared, "b": shared}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temporary file left


def test_write_checks_its_input_first(tmp_path):
    with pytest.raises(ValueError, match=r"needs str -> torch.Tensor; these entries are not: \['b'\]"):
        write_safetensors({"a": torch.zeros(1), "b": [1, 2]}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="metadata must map str -> str"):
        write_safetensors({"a": torch.zeros(1)}, tmp_path / "w.safetensors", metadata={"step": 3})
    assert list(tmp_path.iterdir()) == []


def test_json_roundtrip_and_errors(tmp_path):
    config = {"block_out_channels": [32, 64], "norm_eps": 1e-5, "use_linear_projection": False}
    write_json(config, tmp_path / "sub" / "c.json")
    assert read_json(tmp_path / "sub" / "c.json") == config
    with pytest.raises(TypeError):
        write_json({"bad": object()}, tmp_path / "sub" / "c.json")
    assert read_json(tmp_path / "sub" / "c.json") == config  # the failed write left the old file
    (tmp_path / "broken.json").write_text('{"a": ')
    with pytest.raises(WeightsFileError, match=r"broken\.json is not valid JSON"):
        read_json(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(WeightsFileError, match="holds a JSON list; expected a JSON object"):
        read_json(tmp_path / "list.json")
    with pytest.raises(WeightsFileError, match="does not exist; expected a JSON config file"):
        read_json(tmp_path / "none.json")


def test_read_tensors_do_not_change_when_the_file_is_rewritten_in_place(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors({"w": torch.ones(4096)}, path)
    back = read_safetensors(path)
    with open(path, "r+b") as f:  # a writer that does not replace the file but overwrites its bytes
        f.seek(-4 * 4096, os.SEEK_END)
        f.write(bytes(4 * 4096))
    assert torch.equal(read_safetensors(path)["w"], torch.zeros(4096))  # the file did change...
    assert torch.equal(back["w"], torch.ones(4096))  # ... the tensors read before did not
