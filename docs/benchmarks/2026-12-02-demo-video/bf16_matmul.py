"""The matrix products of one SwiGLU layer of a demo training batch (2,368 tokens, width 128 -> 512), float32
against bfloat16, one thread: python bf16_matmul.py"""
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def ms(f, n=30):
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def row(dt):
    x, w_up = torch.randn(2368, 128, dtype=dt), torch.randn(512, 128, dtype=dt)
    h, w_down = torch.randn(2368, 512, dtype=dt), torch.randn(128, 512, dtype=dt)
    up, down = ms(lambda: F.linear(x, w_up)), ms(lambda: F.linear(h, w_down))
    return f"{str(dt):15} up {up:.2f} ms  down {down:.2f} ms  weight grad {ms(lambda: h.t() @ x):.2f} ms"


for dt in (torch.float32, torch.bfloat16):
    print(row(dt))
print("cpu flags:", " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                             if f in open("/proc/cpuinfo").read().split()))
