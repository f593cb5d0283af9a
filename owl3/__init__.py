"""owl3: a fast, faithful runtime and toolkit for mPLUG-Owl3.

import owl3
pipe = owl3.load("path/to/mPLUG-Owl3-7B-240728")   # or owl3.load() for the built-in default
print(pipe.chat("What is in this picture?", images=["cat.jpg"]))
"""

from owl3.errors import Owl3Error
from owl3.lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {
    "Completion": "owl3.api",
    "Conversation": "owl3.api",
    "Owl3Pipeline": "owl3.api",
    "load": "owl3.api",
    "SamplingParams": "owl3.inference.sampling",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["Owl3Error", "__version__", *_EXPORTS]
