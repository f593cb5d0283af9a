"""Knowledge bases for retrieval-augmented answers (docs/rag.md).

`owl3 kb build|add|search|info` (kb/command.py); `open_kb(path)` and `KnowledgeBase` (kb/store.py, on
LanceDB); image embeddings through the model's own tower and projector (kb/embed.py); answers with
citations (kb/answer.py, behind `pipe.chat(..., kb=KB)`). Importing the package imports none of them.
"""

from owl3.lazy import lazy_exports

_EXPORTS = {
    "KnowledgeBase": "owl3.kb.store",
    "Hit": "owl3.kb.store",
    "open_kb": "owl3.kb.store",
    "read_items": "owl3.kb.items",
    "Citation": "owl3.kb.answer",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
