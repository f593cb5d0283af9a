"""Parity with the official mPLUG-Owl3 implementation on a reference fixture.

The fixture folder (format: ../shared/fixtures/README.md) comes from $OWL3_PARITY_FIXTURE, default the
copy in tests/fixtures. Everything runs through owl3's real loader, processor, model and engine:
input_ids identical, pixel_values within 1e-5, prefill logits within 1e-4, greedy ids identical.
"""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from owl3.checkpoint import load_model
from owl3.inference.engine import Engine
from owl3.inference.sampling import SamplingParams
from owl3.processing import Processor, official_media_offset
from tests.conftest import parity_fixture

FIX = parity_fixture()
SPEC = json.loads((FIX / "cases.json").read_text())
CASES = SPEC["cases"]


@pytest.fixture(scope="module")
def setup():
    model = load_model(FIX, dtype="float32", device="cpu")
    proc = Processor.from_dir(FIX, SPEC["image_size"])
    expected = load_file(FIX / "expected.safetensors")
    return model, proc, expected


def encode(proc, case):
    images = [Image.open(FIX / "images" / f) for f in case.get("images", [])]
    videos = [[Image.open(FIX / "images" / f) for f in case["video"]]] if case.get("video") else []
    return proc(case["messages"], images=images, videos=videos, cut=case["cut"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_inputs_match(setup, case):
    _, proc, exp = setup
    enc = encode(proc, case)
    name = case["name"]
    assert enc.prompt == case["prompt_text"]
    assert enc.input_ids.tolist() == exp[f"{name}.input_ids"][0].tolist()
    assert torch.equal(official_media_offset(enc), exp[f"{name}.media_offset"][0])
    if f"{name}.pixel_values" in exp:
        assert enc.pixel_values is not None
        torch.testing.assert_close(enc.pixel_values, exp[f"{name}.pixel_values"], atol=1e-5, rtol=0)
    else:
        assert enc.pixel_values is None


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_logits_and_greedy_match(setup, case):
    model, proc, exp = setup
    enc = encode(proc, case)
    name = case["name"]
    engine = Engine(model, proc.stop_token_ids, proc.pad_token_id)
    visual = engine.encode_visual([enc])
    with torch.no_grad():
        logits = model(enc.input_ids[None], visual=visual)
    ref = exp[f"{name}.logits"]
    assert (logits - ref).abs().max().item() < 1e-4

    gen = SPEC["generation"]
    assert gen["greedy"]
    stop = tuple(proc.tokenizer.token_to_id(t) for t in gen["stop"])
    params = SamplingParams(max_new_tokens=gen["max_new_tokens"], stop_token_ids=stop)
    ids = [ev.token_id for ev in engine.generate([enc], params)]
    assert ids == exp[f"{name}.generated"][0].tolist()
