"""Nothing lost, nothing silent: the cases an adversarial campaign found, each reproduced.

Each test names the defect it reproduces (the numbering of the campaign's report): data that must
never be lost (a conversion into its own source, interrupted writes), weights and parameters that
must never give a silent black image, and malformed files that must end in the loader's own error.
"""
from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldm.clip_config import CLIPTextConfig
from ldm.pipeline import NonFiniteError
from ldm.vae_config import VAEConfig
from tests.test_null_text import tiny_random_sd
from tests.test_pipeline import WORD_TEXT, WORDS, random_parts, save_project
from ldm.tokenizer import WordTokenizer
from unet.config import UNetConfig
from weights import atomic
from weights.convert import convert
from weights.io import WeightsFileError, read_safetensors, read_safetensors_header, write_json, write_safetensors
from weights.model_folder import load_model_folder


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny random model folder in the project's layout."""
    folder = tmp_path_factory.mktemp("robust") / "model"
    return save_project(folder, random_parts(WORD_TEXT, 0), WordTokenizer(WORDS))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- 1. data loss

@pytest.mark.parametrize("inside", ["tokenizer", "unet", "new/deeper"])
def test_converting_into_a_folder_inside_the_source_is_refused_and_the_source_kept(project, tmp_path, inside):
    """#1: DEST = SRC/tokenizer (or SRC/unet for a diffusers export) with --force used to delete part of
    the source when the old DEST was removed."""
    copy = tmp_path / "src"
    copy.mkdir()
    for name, data in _tree(project).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    (copy / "unet").mkdir(exist_ok=True)
    (copy / "unet" / "keep.txt").write_text("mine")
    before = _tree(copy)
    with pytest.raises(ValueError, match="lies inside the source folder"):
        convert(copy, copy / inside, force=True, log=lambda _: None)
    assert _tree(copy) == before


def test_a_destination_symlink_loop_is_a_clear_error(project, tmp_path):
    """#17: a DEST that is a symlink loop raised RuntimeError from Path.resolve."""
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(ValueError, match="cannot be resolved"):
        convert(project, loop, log=lambda _: None)


# ----------------------------------------------------------------------------------------------- 6, 16. folders

def test_leftovers_of_a_killed_conversion_are_removed_and_a_set_aside_dest_restored(project, tmp_path):
    """#6: a SIGKILLed convert left .DEST.tmp-* folders forever; a crash between the two renames of a
    --force replacement left DEST missing. The next run into the same place repairs both; leftovers
    of a process still alive are left alone."""
    dest = tmp_path / "out"
    convert(project, dest, log=lambda _: None)
    good = _tree(dest)
    dead = 2**22 + 12345  # above the kernel's default pid_max: no such process
    while atomic._alive(dead):
        dead += 1
    stale = tmp_path / f".out.tmp-{dead}-abc"
    stale.mkdir()
    (stale / "unet.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f".out.tmp-{os.getpid()}-def"  # our own pid: a writer that is still running
    live.mkdir()
    aside = tmp_path / f".out.old-{dead}-ghi"
    aside.mkdir()
    os.replace(dest, aside / "out")  # the crash: DEST set aside, the new one never renamed in
    messages = []
    atomic.recover(dest, messages.append)
    assert _tree(dest) == good and not stale.exists() and not aside.exists() and live.exists()
    assert any("recovered" in m for m in messages)
    live.rmdir()


def test_a_forced_replacement_never_leaves_dest_missing(project, tmp_path, monkeypatch):
    """With renameat2(RENAME_EXCHANGE) (Linux) the old DEST is swapped with the new one in one step:
    no rename ever targets DEST, and DEST exists throughout. Without it (the fallback: two renames),
    a crash between the renames is repaired by recover(), which the next conversion runs first."""
    dest = tmp_path / "out"
    convert(project, dest, log=lambda _: None)
    real = os.replace
    seen = []

    def watched(a, b):  # every rename in the process (os.replace is os's): DEST is there after each
        real(a, b)
        seen.append(dest.exists())

    monkeypatch.setattr(atomic.os, "replace", watched)
    convert(project, dest, force=True, log=lambda _: None)
    probe_a, probe_b = tmp_path / "probe-a", tmp_path / "probe-b"
    probe_a.mkdir(), probe_b.mkdir()
    if atomic._exchange(probe_a, probe_b):  # where the file system can exchange, DEST never went missing
        assert all(seen)
    probe_a.rmdir(), probe_b.rmdir()
    assert (dest / "model.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]

    # The fallback, crashed between its two renames:
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    def crash_on_second(a, b):  # os.replace is process-wide: only the rename onto DEST crashes
        if Path(b) == dest:
            raise KeyboardInterrupt("killed between the renames")
        real(a, b)

    monkeypatch.setattr(atomic.os, "replace", crash_on_second)
    monkeypatch.setattr(atomic, "_alive", lambda pid: False)  # the killed writer's process is gone
    with pytest.raises(KeyboardInterrupt):
        convert(project, dest, force=True, log=lambda _: None)
    assert not dest.exists()  # the window the exchange closes
    monkeypatch.setattr(atomic.os, "replace", real)
    convert(project, tmp_path / "elsewhere", log=lambda _: None)  # unrelated: repairs nothing here
    assert not dest.exists()
    convert(project, dest, force=True, log=lambda _: None)  # the next run into DEST puts it back first
    assert (dest / "model.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_the_exchange_is_atomic_on_this_machine(tmp_path):
    """The primitive itself: both paths keep existing and trade contents."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not atomic._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this file system: the fallback is tested above")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_written_files_and_folders_honour_the_umask_and_replaced_files_keep_their_mode(project, tmp_path):
    """#16: every converted DEST was 0700 (mkdtemp), an existing 0600 output became 0644."""
    old = os.umask(0o027)
    try:
        dest = convert(project, tmp_path / "out", log=lambda _: None)
        assert stat.S_IMODE(dest.stat().st_mode) == 0o750
        assert stat.S_IMODE((dest / "unet.safetensors").stat().st_mode) == 0o640
        private = tmp_path / "private.json"
        private.write_text("{}")
        private.chmod(0o600)
        write_json({"a": 1}, private)
        assert stat.S_IMODE(private.stat().st_mode) == 0o600 and json.loads(private.read_text()) == {"a": 1}
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------------------------- 4, 5. silent NaN

def _with(folder: Path, tmp_path: Path, key_fn, change) -> Path:
    """A copy of ``folder`` whose U-Net tensor (the first key_fn accepts) is replaced by change(tensor)."""
    copy = tmp_path / "changed"
    for name, data in _tree(folder).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    tensors = read_safetensors(copy / "unet.safetensors", dtype=None)
    key = next(k for k in tensors if key_fn(k))
    tensors[key] = change(tensors[key])
    write_safetensors(tensors, copy / "unet.safetensors")
    return copy


@pytest.mark.parametrize("change, message", [
    (lambda t: t.clone().fill_(float("nan")), "NaN or inf"),
    (lambda t: torch.full_like(t, float("inf")), "NaN or inf"),
    (lambda t: t.to(torch.int8), "wrong kind of values"),
    (lambda t: t > 0, "wrong kind of values"),
    (lambda t: t.to(torch.int64), "wrong kind of values"),
    (lambda t: t.to(torch.complex64), "wrong kind of values"),
])
def test_non_finite_or_non_float_weights_are_refused_naming_the_tensor(project, tmp_path, change, message):
    """#4: NaN/inf tensors and int8/bool/int64/complex tensors were cast to float and gave a black PNG."""
    folder = _with(project, tmp_path, lambda k: k == "conv_in.weight", change)
    with pytest.raises(ValueError, match=message) as e:
        load_model_folder(folder)
    assert "conv_in.weight" in str(e.value)


@pytest.fixture(scope="module")
def sd():
    return tiny_random_sd()


@pytest.mark.parametrize("kwargs, where", [
    (dict(guidance_scale=1e38), "guidance"),
    (dict(sampler="ddim", eta=1e30), "eta"),
])
def test_absurd_finite_parameters_stop_sampling_with_a_message(sd, kwargs, where):
    """#5: guidance 1e38 and eta 1e30 gave a silent black image; now sampling stops at the step it breaks."""
    with pytest.raises(NonFiniteError, match=where):
        sd.text_to_image(["a red circle"], steps=3, seed=0, progress=False, **kwargs)


def test_non_finite_or_mistyped_latents_are_refused(sd):
    """#5, #17: NaN latents passed to the API; a float64 latent gave a raw matmul dtype error."""
    z = torch.randn(1, 4, 8, 8)
    z[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        sd.text_to_image(["a red circle"], steps=2, latents=z, progress=False)
    with pytest.raises(ValueError, match="dtype torch.float64"):
        sd.text_to_image(["a red circle"], steps=2, latents=torch.randn(1, 4, 8, 8, dtype=torch.float64), progress=False)


def test_a_reweight_that_overflows_stops_with_a_message(sd):
    """#5: re-weight 1e30 through Prompt-to-Prompt gave a black image."""
    from editing.prompt_to_prompt import prompt_to_prompt

    with pytest.raises(NonFiniteError):
        prompt_to_prompt(sd, ["a red circle", "a red circle"], mode=None, reweight={"red": 1e30}, steps=3, seed=0,
                         guidance_scale=5.0, progress=False)


# ----------------------------------------------------------------------------------------------- 9. configs

@pytest.mark.parametrize("cls, kwargs, message", [
    (UNetConfig, dict(num_heads=0), "num_heads must lie in"),
    (UNetConfig, dict(norm_num_groups=0), "norm_num_groups must lie in"),
    (UNetConfig, dict(num_heads=-4), "num_heads must lie in"),
    (UNetConfig, dict(norm_eps="x"), "norm_eps must be a finite number"),
    (UNetConfig, dict(layers_per_block=10**6), "layers_per_block must lie in"),
    (UNetConfig, dict(in_channels="4"), "in_channels must be an int"),
    (UNetConfig, dict(block_out_channels=(320,) * 9, attention_levels=(True,) * 9), "at most 8"),
    (VAEConfig, dict(scaling_factor=float("inf")), "scaling_factor must be a finite number"),
    (CLIPTextConfig, dict(layer_norm_eps=-1), "layer_norm_eps must lie in"),
    (CLIPTextConfig, dict(num_hidden_layers=True), "must be an int"),
])
def test_config_values_are_checked_before_any_arithmetic(cls, kwargs, message):
    """#9: ZeroDivisionError, a hang, a crash mid-sampling or a cryptic TypeError before."""
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# ----------------------------------------------------------------------------------------------- 7. headers

def _header_file(tmp_path: Path, header: dict, data: bytes = b"\0" * 16) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("shape", ["4", 4.0, [-1], None, [2**70], [1] * 20, [True]])
def test_malformed_header_shapes_end_in_the_loaders_error(tmp_path, shape):
    """#7: a shape that is a string, float, negative, null or overflowing gave TypeError/RuntimeError."""
    path = _header_file(tmp_path, {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 16]}})
    with pytest.raises(WeightsFileError, match="malformed"):
        read_safetensors(path)


@st.composite
def mutated_headers(draw):
    """A valid two-tensor header with one field replaced by an arbitrary JSON value."""
    header = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}
    json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                               lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4),
                                                                                                 children, max_size=3),
                               max_leaves=8)
    tensor = draw(st.sampled_from(["a", "b"]))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    if field is None:
        header[tensor] = draw(json_values)
    else:
        header[tensor][field] = draw(json_values)
    return header


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=mutated_headers(), cut=st.integers(0, 24))
def test_fuzzed_safetensors_headers_end_in_the_projects_error(tmp_path, header, cut):
    """Any mutation of a valid header (and any truncation of the data) ends in WeightsFileError, or
    reads cleanly when the mutation happens to be valid; never another exception, never a hang."""
    try:
        raw = json.dumps(header, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return
    path = tmp_path / "f.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (24 - cut))
    try:
        tensors = read_safetensors(path)
    except WeightsFileError:
        return
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())


def test_the_header_reader_checks_sizes_against_offsets(tmp_path):
    path = _header_file(tmp_path, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}})
    with pytest.raises(WeightsFileError, match="span 8 bytes"):
        read_safetensors_header(path)
