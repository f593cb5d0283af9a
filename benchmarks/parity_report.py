"""Print how close owl3 is to the official implementation on a parity fixture, case by case.

    python benchmarks/parity_report.py [FIXTURE_DIR]

Prints a table (max |logit difference|, ids equal, generated ids equal) and one final JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from owl3.checkpoint import load_model
from owl3.inference import Engine, SamplingParams
from owl3.processing import Processor

DEFAULT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official-240728-tiny"


def main(fixture: Path) -> dict:
    spec = json.loads((fixture / "cases.json").read_text())
    model = load_model(fixture)
    proc = Processor.from_dir(fixture, spec["image_size"])
    exp = load_file(fixture / "expected.safetensors")
    engine = Engine(model, proc.stop_token_ids, proc.pad_token_id)
    rows = []
    for case in spec["cases"]:
        name = case["name"]
        images = [Image.open(fixture / "images" / f) for f in case.get("images", [])]
        videos = [[Image.open(fixture / "images" / f) for f in case["video"]]] if case.get("video") else []
        enc = proc(case["messages"], images=images, videos=videos, cut=case["cut"])
        with torch.no_grad():
            logits = model(enc.input_ids[None], visual=engine.encode_visual([enc]))
        stop = tuple(proc.tokenizer.token_to_id(t) for t in spec["generation"]["stop"])
        params = SamplingParams(max_new_tokens=spec["generation"]["max_new_tokens"], stop_token_ids=stop)
        gen = [ev.token_id for ev in engine.generate([enc], params)]
        pix = exp.get(f"{name}.pixel_values")
        rows.append(
            {
                "case": name,
                "input_ids_equal": enc.input_ids.tolist() == exp[f"{name}.input_ids"][0].tolist(),
                "max_pixel_diff": 0.0 if pix is None else (enc.pixel_values - pix).abs().max().item(),
                "max_logit_diff": (logits - exp[f"{name}.logits"]).abs().max().item(),
                "generated_equal": gen == exp[f"{name}.generated"][0].tolist(),
            }
        )
    print(f"{'case':<22}{'ids':>6}{'max|dpix|':>12}{'max|dlogit|':>14}{'greedy':>8}")
    for r in rows:
        print(
            f"{r['case']:<22}{str(r['input_ids_equal']):>6}{r['max_pixel_diff']:>12.2e}"
            f"{r['max_logit_diff']:>14.2e}{str(r['generated_equal']):>8}"
        )
    result = {"fixture": fixture.name, "cases": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
