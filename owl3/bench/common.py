"""What the benchmarks share: random-weight models of a preset, tokenizer-free prompts, peak memory.

Peak memory is measured where it can be defended: on CUDA, `torch.cuda.max_memory_allocated` (the
caching allocator's high-water mark of live tensors); on CPU, the process's resident-set high-water mark
(`VmHWM` in /proc/self/status), reset through /proc/self/clear_refs right before the measured request and
read right after it, in a process of its own per measurement (a fork of a server that only imported
torch) so that nothing freed earlier is still held by the C allocator. It counts everything resident in
that process: Python, torch, the weights and the request's activations.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from owl3.checkpoint.load import parse_device, parse_dtype
from owl3.config import Owl3Config, preset
from owl3.model import Owl3Model, meta_model
from owl3.model.layers import RMSNorm


def random_model(
    cfg: Owl3Config, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu", seed: int = 0
) -> Owl3Model:
    """A model of `cfg` with random weights, built directly on `device` (std 0.02 normals, unit norms)."""
    dev, dt = parse_device(device), parse_dtype(dtype)
    model = meta_model(cfg)
    model = model.to(dt).to_empty(device=dev)  # weights are born in their dtype, on their device
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Embedding)):
                mod.weight.normal_(0.0, 0.02, generator=gen)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
            elif isinstance(mod, (RMSNorm, nn.LayerNorm)):
                mod.weight.fill_(1.0)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
    if cfg.text.tie_word_embeddings:
        model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)


def free_token_id(cfg: Owl3Config) -> int:
    """An id to stand for `<|image|>` in a tokenizer-free prompt: the last one that is not BOS/EOS."""
    i = cfg.text.vocab_size - 1
    while i in (cfg.bos_token_id, cfg.eos_token_id):
        i -= 1
    return i


def synthetic_prompt(
    n_images: int,
    image_token_id: int,
    vocab_size: int,
    text_per_image: int = 5,
    system_tokens: int = 12,
    question_tokens: int = 24,
    seed: int = 0,
) -> tuple[torch.Tensor, list[int]]:
    """Token ids shaped like the paper's many-image prompt, without a tokenizer.

    `system_tokens` of chat header, then per image `text_per_image` tokens ("Image 12: ") and the image
    token, then `question_tokens` of question and assistant header. Returns (L,) ids and the image starts.
    """
    g = torch.Generator().manual_seed(seed)
    hi = max(2, min(vocab_size, image_token_id) - 2)

    def text(n: int) -> list[int]:
        return torch.randint(0, hi, (n,), generator=g).tolist()

    ids = text(system_tokens)
    starts = []
    for _ in range(n_images):
        ids += text(text_per_image)
        starts.append(len(ids))
        ids.append(image_token_id)
    ids += text(question_tokens)
    return torch.tensor(ids, dtype=torch.long), starts


def random_images(n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[Image.Image]:
    """Decoded RGB images in memory (the input of first-token latency)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    # distinct images without paying for n full random draws: roll the base pattern
    return [Image.fromarray(np.roll(base, 37 * i, axis=1)) for i in range(n)]


def preset_or_dir(name_or_dir: str) -> Owl3Config | Path:
    p = Path(name_or_dir)
    return p if p.is_dir() else preset(name_or_dir)


# ---------------------------------------------------------------------- memory
_HWM = re.compile(r"VmHWM:\s+(\d+)\s+kB")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass  # not Linux: the high-water mark then counts from process start


def peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        m = _HWM.search(Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) / 1024 if m else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("cpu" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def machine() -> dict[str, str]:
    """What a CPU run ran on: float sums, and so trained weights, are equal bit for bit only on the same
    kernels (the same torch and vector instructions; docs/demo.md), and its times only on the same CPU."""
    return {"cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"
