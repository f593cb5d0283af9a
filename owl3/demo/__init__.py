"""owl3's demo: a procedurally generated visual world, its tokenizer, training data and a small model.

- world.py      scenes of coloured shapes and words, short videos, PIL rendering (deterministic by seed)
- questions.py  single-image, "In Image X", "which image" and video questions with short-sentence answers
- tokenizer.py  a byte-level BPE trained on the world's text (official file layout)
- data.py       training sets as ms-swift JSONL + PNG/mp4 files, mixed per recipe phase
- model.py      the `demo` presets fitted to the tokenizer; a random initial checkpoint to train from
- tower.py      the vision tower pretrained alone on the world's scene annotations
- train.py      the recipe that trains the shipped model (`owl3 demo-train`)
- synthetic.py  the evaluation task of the world's questions (`owl3 eval synthetic`)
- command.py    `owl3 demo` and `owl3 demo-train`
A leaf: it uses owl3 (config, model, checkpoint, training, evaluation.task); owl3 does not import it.
"""

# torch CPU threads of `owl3 demo-train`: the shipped weights were trained with two, and other thread counts
# sum floats in another order, so they write other weights (docs/demo.md "Two threads")
DEFAULT_THREADS = 2
# pieces of similar length each training batch of `owl3 demo-train` is computed as (TrainConfig.length_split:
# the same step with less padding; 1.25x a step with 2, 1.34x with 4 in one run, benchmarks/train_step.py)
DEFAULT_LENGTH_SPLIT = 2
