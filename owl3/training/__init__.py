"""Training mPLUG-Owl3 with owl3: data readers, label masks, stage policies, LoRA, the loop, `owl3 build`.

    from owl3.training import TrainConfig, train
    result = train(TrainConfig(model="ckpt", data=("train.jsonl",), output="out", stage="sft", max_steps=100))

`build_model(llm_dir, siglip_dir, out)` makes a new Hyper-Attention model from a Qwen2/Llama LLM and a
SigLIP tower. Needs the `train` extra for LoRA (PEFT), YAML recipes and the loss plot.
"""

from owl3.training.build import build_model
from owl3.training.config import STAGES, TrainConfig, load_recipe
from owl3.training.data import Record, read_data
from owl3.training.encode import IGNORE, Batch, Sample, SampleEncoder, collate
from owl3.training.loop import TrainResult, train
from owl3.training.merge import merge_adapter
from owl3.training.stages import add_lora, apply_stage, is_trainable

__all__ = [
    "IGNORE",
    "STAGES",
    "Batch",
    "Record",
    "Sample",
    "SampleEncoder",
    "TrainConfig",
    "TrainResult",
    "add_lora",
    "apply_stage",
    "build_model",
    "collate",
    "is_trainable",
    "load_recipe",
    "merge_adapter",
    "read_data",
    "train",
]
