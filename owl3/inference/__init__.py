"""Generation: text KV cache, visual K/V reuse, sampling, streaming detokenization, the engine."""

from owl3.inference.engine import Engine, TokenEvent
from owl3.inference.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams", "TokenEvent"]
