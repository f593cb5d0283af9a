"""Load an official-layout mPLUG-Owl3 checkpoint folder, strictly and without a second copy.

The model is built on the meta device; each tensor is read lazily from safetensors (one file or shards
with model.safetensors.index.json), checked against the module's shape, cast, moved and assigned in
place. A missing, unexpected or misshapen tensor is an `Owl3Error` that names it.

Both checkpoint families load here (240728 and 241101, `Owl3Config.variant`). The family comes from
config.json; the projector's weight names must agree (and the processor checks the tokenizer's special
tokens), so a folder that mixes families is refused with a message saying which part disagrees.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from owl3.checkpoint.names import to_owl3, weights_variant
from owl3.config import Owl3Config
from owl3.errors import Owl3Error
from owl3.model import Owl3Model, meta_model

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise Owl3Error(f"unsupported dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16")
        return dtype
    if dtype not in DTYPES:
        raise Owl3Error(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return DTYPES[dtype]


def parse_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise Owl3Error(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Owl3Error(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise Owl3Error(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise Owl3Error(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return dev


def read_config(path: str | Path) -> Owl3Config:
    folder = Path(path)
    if folder.is_file():
        raise Owl3Error(
            f"{str(folder)!r} is a file, not a folder; pass the checkpoint folder that holds config.json"
        )
    if not folder.is_dir():
        raise Owl3Error(f"model folder {str(folder)!r} does not exist; pass a checkpoint folder to --model")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise Owl3Error(f"{str(folder)!r} is not an mPLUG-Owl3 checkpoint folder: it has no config.json")
    try:
        return Owl3Config.from_hf(json.loads(cfg_file.read_text()))
    except json.JSONDecodeError as e:
        raise Owl3Error(f"{cfg_file} is not valid JSON ({e})") from e


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise Owl3Error(
            f"{str(folder)!r} has no model.safetensors nor model.safetensors.index.json; "
            "owl3 reads safetensors checkpoints only"
        )
    with safe_open(single, "pt") as f:
        return {name: single for name in f.keys()}


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    old = getattr(module, leaf)
    if isinstance(old, nn.Parameter):
        setattr(module, leaf, nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        setattr(module, leaf, tensor)


def load_model(
    path: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device | None = "cpu"
) -> Owl3Model:
    """Build the model of a checkpoint folder and load its weights in place."""
    folder = Path(path)
    cfg = read_config(folder)
    torch_dtype, dev = parse_dtype(dtype), parse_device(device)
    files = weight_files(folder)
    found = weights_variant(files)
    if found is not None and found != cfg.variant:
        marker = "has" if cfg.variant == "241101" else "lacks"
        raise Owl3Error(
            f"checkpoint {str(folder)!r}: config.json describes a {cfg.variant}-family model (it {marker} "
            f"the field vision_batch_size) but its weights have the {found} projector "
            f"({', '.join(n for n in files if n.startswith('vision2text_model.'))}); use the config.json "
            "that came with these weights"
        )
    model = meta_model(cfg)
    expected = {n: p.shape for n, p in model.state_dict(keep_vars=True).items()}
    tied = cfg.text.tie_word_embeddings
    if tied:
        expected.pop("language_model.lm_head.weight")

    wanted: dict[str, str] = {}  # module name -> checkpoint name
    unexpected = []
    for ck_name in files:
        name = to_owl3(ck_name)
        if name is None or (tied and name == "language_model.lm_head.weight"):
            continue
        if name in expected:
            wanted[name] = ck_name
        else:
            unexpected.append(ck_name)
    missing = sorted(set(expected) - set(wanted))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(sorted(unexpected)[:8])}")
        raise Owl3Error(f"checkpoint {str(folder)!r} does not match its config.json: " + "; ".join(parts))

    by_file: dict[Path, list[str]] = {}
    for name, ck_name in wanted.items():
        by_file.setdefault(files[ck_name], []).append(name)
    for file, names in by_file.items():
        with safe_open(file, "pt", device="cpu") as f:
            for name in names:
                t = f.get_tensor(wanted[name])
                if tuple(t.shape) != tuple(expected[name]):
                    raise Owl3Error(
                        f"tensor {wanted[name]!r} in {file.name} has shape {tuple(t.shape)}, "
                        f"but config.json implies {tuple(expected[name])}"
                    )
                _assign(model, name, t.to(device=dev, dtype=torch_dtype))
    if tied:
        model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    return model.eval().requires_grad_(False)
