"""Answer extraction: the option letter (or yes/no) a free-form output means, and the rule that found it.

Models do not always answer "B". They write "(B)", "B. a cat", "The answer is B.", "**B**", the option's
text instead of its letter, or refuse. `extract_choice` tries a fixed list of rules, most specific first,
and returns the letter with the rule's name, so every record says how its answer was read
(`rule` in the results). An output no rule reads is wrong (rule "none", or "refusal" when it declines).
The official evaluation differs per benchmark (MMBench: E, D, C, B, A tried in that order for a letter
followed by `.,:)`, then a substring match on the options; Video-MME: the first capital A-D anywhere, else
"A"); one rule set for all tasks keeps scores comparable across them and never guesses a letter for an
empty answer.
"""

from __future__ import annotations

import re

METHOD = "owl3-choice-v1"  # the name of this rule set in results files; bump it when a rule changes

# rule names, in the order they are tried
RULES = ("letter", "answer phrase", "bracketed letter", "option text", "lone letter", "refusal", "none")

_REFUSAL = re.compile(
    r"\b(?:sorry|cannot (?:determine|tell|answer|see)|can't (?:determine|tell|answer|see)|unable to|"
    r"not (?:possible|sure) to|no (?:image|picture) (?:is )?(?:provided|given|shown)|none of the)\b",
    re.I,
)


def _clean(text: str) -> str:
    """Without markdown emphasis and surrounding whitespace."""
    return re.sub(r"[*_`]+", "", text).strip()


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def extract_choice(output: str, choices: dict[str, str]) -> tuple[str | None, str]:
    """(letter or None, rule) for a multiple-choice answer; `choices` maps letters to option texts."""
    letters = "".join(choices)
    if not letters:
        return None, "none"
    text = _clean(output)
    if not text:
        return None, "none"
    cls = f"[{re.escape(letters)}]"
    # "B", "B.", "(B)", "[B]", "B) cat", "B: cat", "B. cat", "B\ncat"
    m = re.match(rf"^[(\[]?({cls})(?:[)\].:,]|\s*$|\s*\n)", text)
    if m:
        return m.group(1), "letter"
    # "The answer is B", "Answer: (C)", "the correct option is D.", "Option B"
    m = re.search(
        rf"(?i:answer|option|choice)(?:\s+(?i:is|would be|should be))?\s*[:：-]?\s*[(\[]?({cls})(?![A-Za-z])",
        text,
    )
    if m:
        return m.group(1), "answer phrase"
    found = set(re.findall(rf"[(\[]({cls})[)\]]", text))
    if len(found) == 1:
        return found.pop(), "bracketed letter"
    # the option's text instead of its letter: the longest option text that the output contains as words
    said = f" {_norm(text)} "
    hits = [(len(_norm(t)), k) for k, t in choices.items() if _norm(t) and f" {_norm(t)} " in said]
    if hits:
        hits.sort(reverse=True)
        if len(hits) == 1 or hits[0][0] > hits[1][0]:
            return hits[0][1], "option text"
    # a single valid capital letter standing alone ("I think C is right"); "A" followed by a lower-case
    # word is the article, not an option
    article = re.compile(r"\s+(?!(?:or|and)\b)[a-z]")
    found = {
        m.group(1)
        for m in re.finditer(rf"(?<![A-Za-z])({cls})(?![A-Za-z'])", text)
        if not (m.group(1) in "AI" and article.match(text[m.end() :]))
    }
    if len(found) == 1:
        return found.pop(), "lone letter"
    if _REFUSAL.search(text):
        return None, "refusal"
    return None, "none"


_YES = {"yes", "true", "correct", "right"}
_NO = {"no", "false", "incorrect", "wrong"}


def extract_yes_no(output: str) -> tuple[str | None, str]:
    """("yes" | "no" | None, rule): the first word when it is yes/no (or true/false), else the only one
    of the two that the output says."""
    words = _norm(_clean(output)).split()
    if not words:
        return None, "none"
    if words[0] in _YES:
        return "yes", "first word"
    if words[0] in _NO:
        return "no", "first word"
    said = {"yes" for w in words if w in ("yes", "true")} | {"no" for w in words if w in ("no", "false")}
    if len(said) == 1:
        return said.pop(), "yes/no word"
    if _REFUSAL.search(output):
        return None, "refusal"
    return None, "none"


__all__ = ["METHOD", "RULES", "extract_choice", "extract_yes_no"]
