"""Frozen model configuration.

`Owl3Config.from_hf(dict)` is the ONE place that reads the keys of an official `config.json`;
`to_hf()` writes them back. Everything else in owl3 reads these dataclasses. Named presets
(`preset("tiny")`, ...) give random-weight models for tests and benchmarks.

Two checkpoint families exist (docs/mplug-owl3.md §1, docs/faithfulness.md): 240728 (also 1B/2B-241014:
Linear projector, gated parallel cross-attention) and 241101 (Linear-GELU-Linear projector, fused hyper
attention, its own prompt templates). The family is `Owl3Config.variant`, told from config.json here and
nowhere else; the model, checkpoint I/O and processor read it from the config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from owl3.errors import Owl3Error


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower."""

    dim: int = 1152
    hidden_dim: int = 4304
    n_layers: int = 27
    n_heads: int = 16
    patch_size: int = 14
    image_size: int = 384
    layer_norm_eps: float = 1e-6
    # which hidden state the LLM sees: -2 = output of the second-to-last encoder layer (official)
    select_layer: int = -2

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size  # valid-padding conv drops the remainder pixels

    @property
    def n_tokens(self) -> int:
        """Visual tokens per image (729 for 384-px SigLIP so400m)."""
        return self.grid * self.grid

    @property
    def n_layers_used(self) -> int:
        """Encoder layers that run: the ones up to the selected hidden state."""
        return self.n_layers + 1 + self.select_layer if self.select_layer < 0 else self.select_layer


@dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder with Hyper Attention layers."""

    vocab_size: int = 151851
    dim: int = 3584
    hidden_dim: int = 18944
    n_layers: int = 28
    n_heads: int = 28
    n_kv_heads: int = 4
    head_dim: int = 128
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    # 1-based as in config.json: layer i (0-based) is a hyper layer iff i + 1 in hyper_layers
    hyper_layers: tuple[int, ...] = (1, 9, 17, 25)

    def is_hyper(self, i: int) -> bool:
        return i + 1 in self.hyper_layers


VARIANTS = ("240728", "241101")
# the special tokens only a 241101-family tokenizer has (its cut and video templates)
VARIANT_241101_TOKENS = ("<|start_cut|>", "<|end_cut|>", "<|start_video_frame|>", "<|end_video_frame|>")


@dataclass(frozen=True)
class Owl3Config:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: str = "linear"  # "linear" (240728 family) or "mlp2x_gelu" (241101)
    attention: str = "gated"  # "gated" parallel cross-attention (240728) or "fused" (241101)
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    # 241101: images per forward of the vision tower (config.json `vision_batch_size`); None = no limit
    vision_batch_size: int | None = None

    def __post_init__(self) -> None:
        if (self.projector, self.attention) not in (("linear", "gated"), ("mlp2x_gelu", "fused")):
            raise Owl3Error(
                f"projector {self.projector!r} with attention {self.attention!r} is no released family; "
                "use ('linear', 'gated') for 240728 or ('mlp2x_gelu', 'fused') for 241101"
            )
        if self.vision_batch_size is not None and self.vision_batch_size < 1:
            raise Owl3Error(f"vision_batch_size must be >= 1, got {self.vision_batch_size}")

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def variant(self) -> str:
        """The checkpoint family: "240728" (gated cross-attention) or "241101" (fused hyper attention)."""
        return "241101" if self.attention == "fused" else "240728"

    @property
    def mi_rope_offset(self) -> int:
        """MI-RoPE position of image k minus its image token's index s_k: s_k + 1 (240728), s_k (241101).
        In both families query position p sees image k iff s_k + offset <= p (240728: s_k < p; 241101:
        s_k <= p, the image token sees its own image)."""
        return 0 if self.attention == "fused" else 1

    @classmethod
    def of_variant(cls, variant: str, **fields: Any) -> Owl3Config:
        """A config of checkpoint family `variant` ("240728" or "241101")."""
        if variant not in VARIANTS:
            raise Owl3Error(f"unknown variant {variant!r}; choose 240728 or 241101")
        if variant == "241101":
            fields = {"projector": "mlp2x_gelu", "attention": "fused", **fields}
        return cls(**fields)

    # ------------------------------------------------------------------ official config.json
    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Owl3Config:
        """Read an official mPLUG-Owl3 `config.json` dict."""
        if d.get("model_type") != "mplugowl3":
            raise Owl3Error(
                f"config.json has model_type {d.get('model_type')!r}, expected 'mplugowl3': "
                "point --model at an mPLUG-Owl3 checkpoint folder"
            )
        try:
            v = d["vision_config"]
            vision = VisionConfig(
                dim=v.get("hidden_size", 1152),
                hidden_dim=v.get("intermediate_size", 4304),
                n_layers=v.get("num_hidden_layers", 27),
                n_heads=v.get("num_attention_heads", 16),
                patch_size=v.get("patch_size", 14),
                image_size=v.get("image_size", d.get("image_size", 384)),
                layer_norm_eps=v.get("layer_norm_eps", 1e-6),
            )
            n_heads = d["num_attention_heads"]
            text = TextConfig(
                vocab_size=d["vocab_size"],
                dim=d["hidden_size"],
                hidden_dim=d["intermediate_size"],
                n_layers=d["num_hidden_layers"],
                n_heads=n_heads,
                n_kv_heads=d.get("num_key_value_heads", n_heads),
                head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
                rope_theta=float(d.get("rope_theta", 1e6)),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=d.get("max_position_embeddings", 32768),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                hyper_layers=tuple(d.get("hyper_layers", (1, 9, 17, 25))),
            )
        except KeyError as e:
            raise Owl3Error(
                f"config.json lacks the field {e.args[0]!r}; is it an mPLUG-Owl3 checkpoint?"
            ) from e
        fused = "vision_batch_size" in d  # only the 241101 family has it (docs/mplug-owl3.md §1)
        vbs = d.get("vision_batch_size")
        if fused and vbs is not None and (not isinstance(vbs, int) or vbs < 1):
            raise Owl3Error(f"config.json has vision_batch_size {vbs!r}; it must be a positive integer")
        return cls(
            text=text,
            vision=vision,
            projector="mlp2x_gelu" if fused else "linear",
            attention="fused" if fused else "gated",
            bos_token_id=d.get("bos_token_id", 151643),
            eos_token_id=d.get("eos_token_id", 151645),
            vision_batch_size=vbs if fused else None,
        )

    def to_hf(self) -> dict[str, Any]:
        """The official `config.json` dict, in the layout of the config's family (241101: with
        `vision_batch_size`, the field that tells the family apart)."""
        t, v = self.text, self.vision
        out = {
            "architectures": ["mPLUGOwl3Model"],
            "model_type": "mplugowl3",
            "hidden_act": "silu",
            "hidden_size": t.dim,
            "intermediate_size": t.hidden_dim,
            "num_hidden_layers": t.n_layers,
            "num_attention_heads": t.n_heads,
            "num_key_value_heads": t.n_kv_heads,
            "hyper_layers": list(t.hyper_layers),
            "vocab_size": t.vocab_size,
            "rope_theta": t.rope_theta,
            "rms_norm_eps": t.rms_norm_eps,
            "max_position_embeddings": t.max_position_embeddings,
            "tie_word_embeddings": t.tie_word_embeddings,
            "image_size": v.image_size,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
            "use_cache": True,
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": v.dim,
                "intermediate_size": v.hidden_dim,
                "num_hidden_layers": v.n_layers,
                "num_attention_heads": v.n_heads,
                "patch_size": v.patch_size,
                "image_size": v.image_size,
                "layer_norm_eps": v.layer_norm_eps,
            },
        }
        if self.variant == "241101":
            # written even when unset (null): its presence is what marks the family
            out["vision_batch_size"] = self.vision_batch_size
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- presets
_PRESETS: dict[str, Owl3Config] = {
    # exactly the released 7B-240728 shape
    "7b": Owl3Config(),
    # exactly the released 1B-241014 shape
    "1b": Owl3Config(
        text=TextConfig(
            dim=896,
            hidden_dim=4864,
            n_layers=24,
            n_heads=14,
            n_kv_heads=2,
            head_dim=64,
            tie_word_embeddings=True,
            hyper_layers=(6, 13, 20, 22),
        )
    ),
    # exactly the released 7B-241101 shape: the 7B LLM with other hyper layers and vocabulary, 378-px images,
    # Linear-GELU-Linear projector, fused hyper attention (docs/mplug-owl3.md §1)
    "7b-241101": Owl3Config.of_variant(
        "241101",
        text=TextConfig(vocab_size=151651, hyper_layers=(7, 15, 23, 26)),
        vision=VisionConfig(image_size=378),
    ),
    # CPU benchmarks (docs/performance.md): the 7B-240728 proportions at ~1/127 of its size. Kept from the
    # 7B: LLM/vision parameter ratio (17.3 vs 18.5), layers that run (14 LLM : 13 vision = 28 : 26), hyper
    # layers at the same depths (every 8th of 28 -> every 4th of 14), 7 query heads per kv head,
    # head_dim/dim and MLP/dim ratios, the embeddings' share of the LLM (14.5% vs 14.3%).
    # Fewer visual tokens per image: 256 (224 px) instead of 729, so the concat baseline fits in a minute.
    "small": Owl3Config(
        text=TextConfig(
            vocab_size=9728,
            dim=448,
            hidden_dim=2368,
            n_layers=14,
            n_heads=7,
            n_kv_heads=1,
            head_dim=64,
            hyper_layers=(1, 5, 9, 13),
        ),
        vision=VisionConfig(dim=144, hidden_dim=538, n_layers=14, n_heads=8, image_size=224),
        bos_token_id=9727,
        eos_token_id=9726,
    ),
    # unit tests: the fixture's proportions
    "tiny": Owl3Config(
        text=TextConfig(
            vocab_size=488,
            dim=64,
            hidden_dim=128,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            hyper_layers=(1, 3),
        ),
        vision=VisionConfig(dim=32, hidden_dim=64, n_layers=3, n_heads=4, image_size=56),
        bos_token_id=420,
        eos_token_id=422,
    ),
    # the built-in demo model (owl3.demo): trained from scratch on the synthetic world on a CPU.
    # 84-px images = 6x6 patches; hyper layer 1 sits right after the embeddings so the tokens after
    # each image can take in that image (see docs/demo.md). vocab_size and the special-token ids are those
    # of the world tokenizer (owl3.demo.tokenizer, 967 BPE tokens + 4 specials, padded to 1024);
    # owl3.demo.model.demo_config re-reads them from the tokenizer it is given.
    "demo": Owl3Config(
        text=TextConfig(
            vocab_size=1024,
            dim=128,
            hidden_dim=512,
            n_layers=6,
            n_heads=4,
            n_kv_heads=2,
            head_dim=32,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            hyper_layers=(1, 4),
        ),
        vision=VisionConfig(dim=96, hidden_dim=384, n_layers=4, n_heads=4, image_size=84),
        bos_token_id=967,
        eos_token_id=969,
    ),
}


# CPU benchmarks of the 241101 family: the `small` shapes with the fused hyper attention, the 2-layer
# projector and hyper layers at the 7B-241101's depths (7, 15, 23, 26 of 28 -> 4, 8, 12, 13 of 14)
_PRESETS["small-241101"] = replace(
    _PRESETS["small"],
    text=replace(_PRESETS["small"].text, hyper_layers=(4, 8, 12, 13)),
    projector="mlp2x_gelu",
    attention="fused",
)

# unit tests of the 241101 family: the tiny shapes, fused hyper attention, a 2-layer projector and a vision
# tower run 3 images at a time; the fixture tokenizer plus the four 241101 special tokens (ids 424-427,
# inside the 488 rows; tests/helpers_241101.py adds them to the fixture's tokenizer.json)
_PRESETS["tiny-241101"] = Owl3Config.of_variant(
    "241101",
    text=_PRESETS["tiny"].text,
    vision=_PRESETS["tiny"].vision,
    bos_token_id=420,
    eos_token_id=422,
    vision_batch_size=3,
)

# the built-in demo model since the twelfth session (`owl3 demo-train --recipe cells`): the `demo` preset
# with 28-px patches, so each of the 9 visual tokens of an 84-px picture is one cell of the world's 3x3
# grid. The tower learns the scenes ~4x faster in wall-clock time and the whole recipe takes about half the
# time, which pays for a last phase on the weak one-image kinds (docs/demo.md, "One token per cell").
_PRESETS["demo-cells"] = replace(_PRESETS["demo"], vision=replace(_PRESETS["demo"].vision, patch_size=28))


def preset(name: str, **overrides: Any) -> Owl3Config:
    """A named configuration; `overrides` replace top-level fields."""
    if name not in _PRESETS:
        raise Owl3Error(f"unknown preset {name!r}; choose one of {', '.join(sorted(_PRESETS))}")
    return replace(_PRESETS[name], **overrides)


def preset_names() -> list[str]:
    return sorted(_PRESETS)
