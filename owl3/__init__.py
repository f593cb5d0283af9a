"""owl3: a fast, faithful runtime and toolkit for mPLUG-Owl3.

import owl3
pipe = owl3.load("path/to/mPLUG-Owl3-7B-240728")   # or owl3.load() for the built-in default
print(pipe.chat("What is in this picture?", images=["cat.jpg"]))
"""

from owl3.api import Completion, Conversation, Owl3Pipeline, load
from owl3.errors import Owl3Error
from owl3.inference.sampling import SamplingParams

__version__ = "0.1.0"
__all__ = ["Completion", "Conversation", "Owl3Error", "Owl3Pipeline", "SamplingParams", "load", "__version__"]
