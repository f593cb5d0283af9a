"""Runs mPLUG-Owl3's official 240728 remote code, for benchmarks/official_speed.py.

Not part of owl3 and not run with owl3's venv: it runs in a separate environment with the official code's
own dependencies (transformers 4.46, einops, icecream; see docs/performance.md) and imports the official
files from `--code DIR` (kept outside this repository). It loads a checkpoint folder with the official
classes (`mPLUGOwl3Model.from_pretrained(..., attn_implementation="sdpa")`, float32, CPU), then answers
commands, one JSON object per line on stdin, with one JSON line on stdout:

    {"op": "run", "inputs": FILE, "new_tokens": N}   time one greedy generation
    {"op": "profile", "inputs": FILE, "out": FILE}   torch.profiler table of the first token, to FILE
    {"op": "quit"}

FILE (safetensors) holds `input_ids` (1, L), `pixel_values` (N, 3, S, S) and `media_offset` (1, L, 2) in
the official form: what the official processor returns. A run does what the official
`mPLUGOwl3Model.generate` does (`forward_image`, then `language_model.generate` with the image embeddings
and media_offset), greedy, with no stop token, so it makes exactly N tokens. It reports the first-token
time (from the processor's output to the first sampled token: vision tower, projector, prefill, first
sample), its vision part, and the mean gap between the tokens after the second.

`--check-fixture DIR` instead loads the shared official fixture (official-240728-tiny) and compares the
logits of each case's full forward with the expected ones: the proof that this environment runs the
official behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path


def stub_torchvision() -> None:
    """The official files import torchvision at module level (modeling_mplugowl3: unused; the image
    processor: resize/crop helpers). Nothing timed here runs the image processor, and no torchvision
    build matches the one torch on this machine, so a stand-in module that fails if ever used is enough."""
    if "torchvision" in sys.modules:
        return
    import transformers.utils.import_utils  # noqa: F401  (its torchvision check runs before the stand-in)

    class Unavailable:
        """Any torchvision name: attributes resolve (the files read some at import), calls fail."""

        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return self

        def __call__(self, *_a, **_k):
            raise RuntimeError("torchvision is stubbed out in this driver: the image processor cannot run")

    class Stub(types.ModuleType):
        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return Unavailable()

    for name in (
        "torchvision",
        "torchvision.ops",
        "torchvision.ops.boxes",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.transforms.transforms",
    ):
        mod = Stub(name)
        mod.__path__ = []  # a package, so submodules import
        sys.modules[name] = mod


def load_official(code: Path, model_dir: Path):
    import torch

    stub_torchvision()
    sys.path.insert(0, str(code))
    from modeling_mplugowl3 import mPLUGOwl3Model  # the official file

    model = mPLUGOwl3Model.from_pretrained(
        str(model_dir), attn_implementation="sdpa", torch_dtype=torch.float32
    )
    return model.eval()


class Clock:
    """A streamer for `generate`: the time of every `put` (the prompt first, then each new token)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) > 1:
            self.tokens += value.reshape(-1).tolist()

    def end(self) -> None:
        pass


def run(model, inputs: dict, new_tokens: int) -> dict:
    import torch

    ids, pixels, offset = inputs["input_ids"], inputs["pixel_values"], inputs["media_offset"]
    clock = Clock()
    with torch.inference_mode():
        t0 = time.perf_counter()
        embeds = model.forward_image(pixels)  # as mPLUGOwl3Model.generate does
        t1 = time.perf_counter()
        model.language_model.generate(
            input_ids=ids,
            image_embeds=embeds,
            media_offset=offset,
            attention_mask=torch.ones_like(ids),
            pad_token_id=0,
            eos_token_id=None,  # no stop: exactly new_tokens tokens, as the other side
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            streamer=clock,
        )
    times = clock.times[1:]  # [0] is the prompt
    # decode: the gaps after the second token (owl3's engine hands out the first two tokens together:
    # the step that finishes a prefill also runs a decode step), the same definition on both sides
    gaps = [b - a for a, b in zip(times[1:], times[2:], strict=False)]
    return {
        "ftl_s": times[0] - t0,
        "vision_s": t1 - t0,
        "decode_ms": 1000 * sum(gaps) / len(gaps) if gaps else None,
        "tokens": clock.tokens,
    }


GROUPS = (  # (regular expression of a module name, the part of the first token it stands for)
    (r"vision_model\.embeddings", "vision: patch + position embedding"),
    (r"vision_model\.encoder\.layers\.\d+", "vision: encoder layers"),
    (r"vision_model\.post_layernorm", "vision: post_layernorm"),
    (r"vision_model\.head", "vision: pooling head"),
    (r"vision2text_model", "projector"),
    (r"language_model\.model\.embed_tokens", "text: embed_tokens"),
    (r"language_model\.model\.layers\.\d+", "text: decoder layers"),
    (r"language_model\.model\.layers\.\d+\.self_attn\.v_kv_proj", "  of which/else: visual K/V v_kv_proj"),
    (
        r"language_model\.model\.layers\.\d+\.self_attn\.v_core_attention_sdpa",
        "  of which: cross-attention SDPA",
    ),
    (r"language_model\.lm_head", "text: lm_head"),
)


def module_times(model, fn) -> tuple[dict[str, float], dict[str, int]]:
    """Wall seconds (and calls) spent in the modules of GROUPS while `fn()` runs, summed per group, by
    forward hooks (a group nested in another is also inside the other's time)."""
    import re

    rules = [(re.compile(pat), label) for pat, label in GROUPS]
    secs: dict[str, float] = {}
    calls: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        label = next((lab for rx, lab in rules if rx.fullmatch(name)), None)
        if label is None:
            continue

        def pre(_m, _a, label=label):
            _m._owl3_t0 = time.perf_counter()

        def post(_m, _a, _o, label=label):
            secs[label] = secs.get(label, 0.0) + time.perf_counter() - _m._owl3_t0
            calls[label] = calls.get(label, 0) + 1

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return secs, calls


def profile(model, inputs: dict, out: Path) -> dict:
    """The first token three times: under module timers, under torch.profiler (op table to `out`) and
    under cProfile (`out` with .cprofile.txt)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    got = {}
    secs, calls = module_times(model, lambda: got.update(run(model, inputs, 1)))
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        run(model, inputs, 1)
    out.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    pr = cProfile.Profile()
    pr.enable()
    run(model, inputs, 1)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(50)
    out.with_suffix(".cprofile.txt").write_text(s.getvalue())
    return {"ftl_s": got["ftl_s"], "vision_s": got["vision_s"], "modules_s": secs, "calls": calls}


def check_fixture(code: Path, fixture: Path) -> int:
    import torch
    from safetensors.torch import load_file

    model = load_official(code, fixture)
    exp = load_file(str(fixture / "expected.safetensors"))
    names = sorted({k.split(".")[0] for k in exp})
    worst = 0.0
    with torch.inference_mode():
        for name in names:
            pixels = exp.get(f"{name}.pixel_values")
            out = model(
                pixel_values=pixels,
                input_ids=exp[f"{name}.input_ids"],
                media_offset=exp[f"{name}.media_offset"],
                attention_mask=None,
                use_cache=False,
            )
            diff = (out.logits - exp[f"{name}.logits"]).abs().max().item()
            worst = max(worst, diff)
            print(f"{name:20s} max |logits - expected| = {diff:.2e}")
    print(json.dumps({"fixture": str(fixture), "max_abs_diff": worst, "ok": worst < 1e-4}))
    return 0 if worst < 1e-4 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, required=True, help="folder of the official 240728 .py files")
    ap.add_argument("--model", type=Path, help="checkpoint folder (official layout)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--check-fixture", type=Path, help="compare logits with the official fixture and exit")
    args = ap.parse_args()
    # answers go to the original stdout; everything the official code prints goes to stderr
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch
    from safetensors.torch import load_file

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check_fixture:
        return check_fixture(args.code, args.check_fixture)
    t = time.perf_counter()
    model = load_official(args.code, args.model)
    import transformers

    ready = {
        "ready": True,
        "load_s": time.perf_counter() - t,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vision_attn": model.vision_model.config._attn_implementation,
        "text_attn": model.language_model.config._attn_implementation,
    }
    print(json.dumps(ready), file=answers, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        inputs = load_file(cmd["inputs"])
        if cmd["op"] == "run":
            res = run(model, inputs, int(cmd["new_tokens"]))
        else:
            res = profile(model, inputs, Path(cmd["out"]))
        print(json.dumps(res), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
