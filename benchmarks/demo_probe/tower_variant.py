"""A random demo checkpoint with another vision patch size / image size (row 8 of docs/demo.md's table).

python benchmarks/demo_probe/tower_variant.py SRC_INIT PATCH SIZE OUT
"""

import shutil
import sys
from dataclasses import replace
from pathlib import Path

from tokenizers import Tokenizer

from owl3.checkpoint import save_model
from owl3.demo.model import demo_config, init_weights
from owl3.model import Owl3Model

src, patch, size, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = demo_config(Tokenizer.from_file(str(src / "tokenizer.json")))
cfg = replace(cfg, vision=replace(cfg.vision, patch_size=patch, image_size=size))
save_model(init_weights(Owl3Model(cfg), 0), out, copy_from=src)
shutil.copy(src / "generation_config.json", out)
print(cfg.vision)
