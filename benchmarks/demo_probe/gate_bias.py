"""Open a demo model's hyper-layer gates: add BIAS to every gate channel's bias (sigmoid(3) = 0.95).

    python benchmarks/demo_probe/gate_bias.py MODEL OUT BIAS [LAYERS]

LAYERS: comma-separated 1-based hyper-layer numbers among the hyper layers (default: all).
"""

import sys

import torch

from owl3.checkpoint import load_model, save_model
from owl3.demo.model import open_gates

model_dir, out, bias = sys.argv[1], sys.argv[2], float(sys.argv[3])
m = load_model(model_dir)
hyper = [layer.self_attn for layer in m.language_model.model.layers if layer.self_attn.is_hyper]
which = [int(k) for k in sys.argv[4].split(",")] if len(sys.argv) > 4 else range(1, len(hyper) + 1)
if len(which) == len(hyper):
    open_gates(m, bias)
else:
    with torch.no_grad():
        for k in which:
            hyper[k - 1].gate_proj[0].bias += bias
save_model(m, out, copy_from=model_dir)
print(f"{out}: gate bias +{bias} in hyper layers {list(which)}")
