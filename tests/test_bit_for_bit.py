"""Every sampling entry point and CLI computes what it computed when tests/bit_for_bit.json was
recorded: the same bits on the recording platform, the same numbers within rounding elsewhere
(see tests/bit_for_bit.py for what runs and how to record anew)."""
from __future__ import annotations

import json

import pytest

from tests import bit_for_bit


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(bit_for_bit.RECORD.read_text())


@pytest.fixture(scope="module")
def outputs() -> dict:
    return bit_for_bit.record()


def test_every_output_is_recorded(recorded, outputs):
    assert sorted(outputs) == sorted(recorded["outputs"])
    assert len(outputs) >= 60  # each entry point gives at least one output on each model


def test_outputs_unchanged(recorded, outputs):
    """Bit for bit on the recording platform; elsewhere within bit_for_bit.FINGERPRINT_TOLERANCE (its
    measurement is written beside it)."""
    where, changed = bit_for_bit.compare(recorded, outputs)
    assert not changed, f"{len(changed)} outputs changed ({where}): {changed}"


def test_the_fingerprint_check_can_fail(recorded, outputs):
    """Off the recording platform the check is by fingerprint: a change of 1% of one output's std fails it."""
    other = dict(recorded, platform={"torch": "another"})
    name = next(iter(recorded["outputs"]))
    moved = dict(outputs, **{name: dict(outputs[name], fingerprint=[
        v + 0.01 * recorded["outputs"][name]["fingerprint"][1] for v in outputs[name]["fingerprint"]])})
    assert bit_for_bit.compare(other, outputs)[1] == []
    assert bit_for_bit.compare(other, moved)[1] == [f"{name} (0.01 of its std)"]


def test_the_digest_sees_one_bit():
    """The check can fail: one flipped bit of one value changes the digest."""
    import torch

    x = torch.linspace(-1, 1, 64)
    y = x.clone()
    y.view(torch.int32)[17] ^= 1  # the lowest mantissa bit of one value
    assert bit_for_bit.summarize(x)["sha256"] != bit_for_bit.summarize(y)["sha256"]
    assert bit_for_bit.summarize(x)["sha256"] == bit_for_bit.summarize(x.clone())["sha256"]
