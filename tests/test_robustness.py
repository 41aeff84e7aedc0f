"""Nothing lost, nothing silent: the cases an adversarial campaign found, each reproduced.

Each test names the defect it reproduces (the numbering of the campaign's report): data that must
never be lost (a conversion into its own source, interrupted writes), weights and parameters that
must never give a silent black image, and malformed files that must end in the loader's own error.
"""
from __future__ import annotations

import dataclasses
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
    from editing.prompt_to_prompt import Reweight, prompt_to_prompt

    with pytest.raises(NonFiniteError):
        prompt_to_prompt(sd, ["a red circle", "a red circle"], Reweight({"red": 1e30}), steps=3, seed=0,
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


# ----------------------------------------------------------------------------------------------- 8. convert checks

def _project_copy(project: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    for name, data in _tree(project).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    return copy


@pytest.mark.parametrize("change, message", [
    ({"beta_schedule": "foo"}, "beta_schedule='foo'"),
    ({"num_train_timesteps": 0}, "num_train_timesteps=0"),
    ({"num_train_timesteps": 10**9}, "num_train_timesteps=1000000000"),
    ({"beta_start": -0.1}, "beta_start=-0.1"),
    ({"beta_start": 0.02, "beta_end": 0.01}, "beta_end=0.01"),
    ({"steps_offset": 5000}, "steps_offset=5000"),
    ({"clip_sample": True}, "unknown scheduler settings"),
])
def test_scheduler_settings_are_checked_when_read(project, tmp_path, change, message):
    """#8: convert copied scheduler settings unchecked and wrote folders it could not load."""
    src = _project_copy(project, tmp_path)
    manifest = json.loads((src / "model.json").read_text())
    manifest["scheduler"].update(change)
    (src / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=message):
        convert(src, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=message):
        load_model_folder(src)


@pytest.mark.parametrize("size, message", [(72, "multiple of 32"), (65536, r"2048\], got 65536"), (8, "multiple of 32")])
def test_an_image_size_the_pipeline_cannot_sample_is_refused_at_conversion(project, tmp_path, size, message):
    """#8, #12: image_size was checked for a multiple of 8 while the pipeline needs the VAE's and the
    U-Net's factors (32 for these tiny configs); 65536 was accepted."""
    src = _project_copy(project, tmp_path)
    manifest = json.loads((src / "model.json").read_text())
    manifest["image_size"] = size
    (src / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=message):
        convert(src, tmp_path / "out", log=lambda _: None)


def test_unknown_manifest_fields_are_refused(project, tmp_path):
    """#17: unknown manifest fields were ignored."""
    src = _project_copy(project, tmp_path)
    manifest = json.loads((src / "model.json").read_text())
    manifest["guidance"] = 7.5
    (src / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsFileError, match=r"unknown manifest fields \['guidance'\]"):
        load_model_folder(src)


@pytest.fixture(scope="module")
def fuzz_folder(project, tmp_path_factory) -> Path:
    return _project_copy(project, tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # ~0.3 s each
@given(key=st.sampled_from(["format", "parts", "tokenizer", "scheduler", "latent_scale", "image_size", "extra"]),
       value=st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                          | st.text(max_size=6), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                          max_leaves=6))
def test_fuzzed_manifests_end_in_a_clear_error(project, fuzz_folder, key, value):
    """Any one field of model.json replaced by any JSON value: the folder loads, or the reader raises
    the project's error (a ValueError subclass naming the file or field); never another exception."""
    src = fuzz_folder
    manifest = json.loads((project / "model.json").read_text())
    manifest[key] = value
    (src / "model.json").write_text(json.dumps(manifest))
    from ldm.pipeline import StableDiffusion

    try:
        StableDiffusion.from_folder(src)
    except (ValueError, FileNotFoundError):
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(f.name for f in dataclasses.fields(UNetConfig)) + ["extra", "LIMITS"]),
       value=st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=4)
       | st.lists(st.integers(-5, 5000) | st.booleans(), max_size=9))
def test_fuzzed_configs_end_in_a_clear_error(key, value):
    """Any one field of unet.json replaced by any JSON value: the config builds (and then describes a
    network of bounded size), or UNetConfig.from_dict raises ValueError; never another exception."""
    d = UNetConfig.tiny().to_dict()
    d[key] = value
    try:
        config = UNetConfig.from_dict(d)
    except ValueError:
        return
    assert sum(config.block_out_channels) <= 8 * 8192 and config.layers_per_block <= 16


# ----------------------------------------------------------------------------------------------- 10-12. images

def test_output_paths_are_checked_before_the_heavy_work(tmp_path, capsys):
    """#10: --out x.psd (PIL reads PSD but cannot write it), a folder named x.png, a path under a
    file: each failed with a traceback after sampling. Now argparse refuses them first (exit 2)."""
    from ldm.cli.generate import main

    (tmp_path / "x.png").mkdir()
    (tmp_path / "file").write_text("")
    for out, message in ((tmp_path / "x.psd", "cannot write .psd"), (tmp_path / "x.png", "is a folder"),
                         (tmp_path / "file" / "y.png", "is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            main(["--weights", str(tmp_path), "--prompt", "a red circle", "--out", str(out)])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    """#11: a PNG header claiming 100000 x 100000 pixels gave a raw DecompressionBombError traceback."""
    import zlib

    from ldm.images import load_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="bomb.png is too large to decode safely"):
        load_image(path)
    with pytest.raises(ValueError, match="more than this library reads"):
        load_image(torch.zeros(3, 5000, 5000))


def test_sizes_beyond_the_limit_are_refused_before_sampling(sd):
    """#12: 100000 x 64 ran for minutes; 100000 x 100000 failed in allocation."""
    with pytest.raises(ValueError, match="larger than 2048"):
        sd.text_to_image(["a red circle"], steps=2, height=100032, width=64, progress=False)


# ----------------------------------------------------------------------------------------------- 13. tokenizers

def test_tokenizer_files_fail_with_messages_naming_the_file(tmp_path):
    """#13: a non-gzip .gz gave BadGzipFile; an empty merges.txt was accepted (prompts silently split
    into bytes); duplicate ids were accepted; a vocabulary without byte tokens failed at generation."""
    from ldm.clip_tokenizer import CLIPTokenizer

    fake = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    fake.write_text("not gzip")
    with pytest.raises(ValueError, match="is not a gzipped UTF-8 merges file"):
        CLIPTokenizer.from_bpe_file(fake)
    folder = tmp_path / "tok"
    folder.mkdir()
    from ldm.clip_tokenizer import END_OF_WORD, bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + END_OF_WORD for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=r"tok \(vocab.json \+ merges.txt\): there are no merges"):
        CLIPTokenizer.from_folder(folder)
    (folder / "vocab.json").write_text(json.dumps({**{t: i for i, t in enumerate(tokens)}, "x y": 3}))
    with pytest.raises(ValueError, match="each once"):
        CLIPTokenizer.from_folder(folder)
    (folder / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    with pytest.raises(ValueError, match="lacks 512 of the 512 byte tokens"):
        CLIPTokenizer.from_folder(folder)
    only_json = tmp_path / "new"
    only_json.mkdir()
    (only_json / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds only tokenizer.json"):
        CLIPTokenizer.from_folder(only_json)


def test_a_tokenizer_that_does_not_fit_the_text_encoder_is_refused(sd):
    """#13: from_folder never checked that the tokenizer fits the text encoder."""
    from ldm.pipeline import StableDiffusion

    small = WordTokenizer(WORDS[:3])
    with pytest.raises(ValueError, match="does not fit the text encoder"):
        StableDiffusion(sd.unet, sd.vae, sd.text_encoder, small, sd.schedule, image_size=64)


# ----------------------------------------------------------------------------------------------- 14, 15, 17

def test_the_conversion_hint_for_a_pickle_cannot_inject_shell_code(tmp_path):
    """#14: the hint put the path unquoted into a shell one-liner; pasting it for a file named
    `$(touch X).ckpt` ran `touch X`. Now the printed command, run by a shell, creates nothing but
    the converted file's attempt (the path is an argument, quoted)."""
    import subprocess

    evil = tmp_path / "$(touch INJECTED).ckpt"
    torch.save({"w": torch.zeros(1)}, evil)
    with pytest.raises(WeightsFileError) as e:
        read_safetensors(evil)
    command = next(line.strip() for line in str(e.value).splitlines() if line.strip().startswith("python -c"))
    import sys

    command = command.replace("python", f"'{sys.executable}'", 1)
    subprocess.run(command, shell=True, cwd=tmp_path, check=False, capture_output=True)
    assert not (tmp_path / "INJECTED").exists()
    assert (tmp_path / "$(touch INJECTED).safetensors").is_file()  # and the command did its job


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64 - 1, 2**64, True, 1.5])
def test_seeds_that_would_alias_are_refused(sd, seed):
    """#15: 2^64 gave "Overflow when unpacking long long"; 2^63 gave seed 0's image; -1, 2^63 - 1 and
    2^64 - 1 gave one image. Seeds are ints in [0, 2^63 - 1]."""
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\^63 - 1\]"):
        sd.text_to_image(["a red circle"], steps=2, seed=seed, progress=False)


def test_seed_and_device_flags_are_checked_by_argparse(tmp_path, capsys):
    from ldm.cli.generate import main

    for flags, message in ((["--seed", str(2**63)], "expected a seed in [0, 2^63 - 1]"),
                           (["--device", "bogus"], "expected a torch device"),
                           (["--device", "cuda:7"], "cuda:7")):
        with pytest.raises(SystemExit) as e:
            main(["--weights", str(tmp_path), "--prompt", "a", "--out", str(tmp_path / "a.png"), *flags])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_other_bad_arguments(sd, tmp_path, capsys):
    """#17: steps=True was taken as 1; generator=5 gave AttributeError; --reweight red=2 RED=3 let the
    last win silently."""
    with pytest.raises(ValueError, match="num_inference_steps must be a positive int, got True"):
        sd.text_to_image(["a red circle"], steps=True, seed=0, progress=False)
    with pytest.raises(ValueError, match="generator must be a torch.Generator, got int"):
        sd.text_to_image(["a red circle"], steps=2, generator=5, progress=False)
    from ldm.cli.p2p import main

    with pytest.raises(SystemExit):
        main(["--weights", str(tmp_path), "--prompts", "a red circle", "a red square", "--mode", "reweight",
              "--reweight", "red=2", "RED=3", "--out", str(tmp_path / "x.png")])
    assert "--reweight names ['red'] more than once" in capsys.readouterr().err


def test_demo_figures_take_the_format_of_their_extension_and_the_umask(tmp_path):
    """#16: demo outputs were 0600 (mkstemp) and always PNG bytes, whatever the extension."""
    from matplotlib.figure import Figure
    from PIL import Image

    from toyworld.demo_2d import save_figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    old = os.umask(0o077)
    try:
        save_figure(fig, tmp_path / "a.jpg")
        save_figure(fig, tmp_path / "b.png")
    finally:
        os.umask(old)
    assert Image.open(tmp_path / "a.jpg").format == "JPEG" and Image.open(tmp_path / "b.png").format == "PNG"
    assert stat.S_IMODE((tmp_path / "a.jpg").stat().st_mode) == 0o600  # what umask 077 asks for
    save_figure(fig, tmp_path / "c.png")
    assert stat.S_IMODE((tmp_path / "c.png").stat().st_mode) == 0o666 & ~old
