"""nn.Modules only: pure forwards, no tokenizers, no PIL, no serving."""

from owl3.model.hyper import RowVisuals, VisualContext
from owl3.model.owl3 import Owl3Model, meta_model

__all__ = ["Owl3Model", "RowVisuals", "VisualContext", "meta_model"]
