"""Training mPLUG-Owl3 with owl3: data readers, label masks, stage policies, LoRA, the loop, `owl3 build`.

    from owl3.training import TrainConfig, train
    result = train(TrainConfig(model="ckpt", data=("train.jsonl",), output="out", stage="sft", max_steps=100))

`build_model(llm_dir, siglip_dir, out)` makes a new Hyper-Attention model from a Qwen2/Llama LLM and a
SigLIP tower. Needs the `train` extra for LoRA (PEFT), YAML recipes and the loss plot. Names are
imported on first use, so that building the CLI parser does not import torch.
"""

from owl3.lazy import lazy_exports

_EXPORTS = {
    "build_model": "owl3.training.build",
    "STAGES": "owl3.training.config",
    "TrainConfig": "owl3.training.config",
    "load_recipe": "owl3.training.config",
    "Record": "owl3.training.data",
    "read_data": "owl3.training.data",
    "IGNORE": "owl3.training.encode",
    "Batch": "owl3.training.encode",
    "Sample": "owl3.training.encode",
    "SampleEncoder": "owl3.training.encode",
    "collate": "owl3.training.encode",
    "TrainResult": "owl3.training.loop",
    "train": "owl3.training.loop",
    "merge_adapter": "owl3.training.merge",
    "add_lora": "owl3.training.stages",
    "apply_stage": "owl3.training.stages",
    "is_trainable": "owl3.training.stages",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
