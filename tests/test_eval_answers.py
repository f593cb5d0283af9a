"""Answer extraction on a table of real-looking model outputs: letters in brackets, "The answer is B",
markdown, the option's text instead of its letter, the article "A", refusals; and yes/no answers."""

from __future__ import annotations

import pytest

from owl3.evaluation.answers import RULES, extract_choice, extract_yes_no

CHOICES = {"A": "a red car", "B": "a dark red car", "C": "two dogs", "D": "nothing"}

TABLE = [
    ("B", "B", "letter"),
    ("B.", "B", "letter"),
    ("(C)", "C", "letter"),
    ("[D]", "D", "letter"),
    ("**B**", "B", "letter"),
    ("  C) two dogs", "C", "letter"),
    ("D: nothing at all", "D", "letter"),
    ("A. a red car", "A", "letter"),
    ("C\nBecause there are two of them.", "C", "letter"),
    ("The answer is B.", "B", "answer phrase"),
    ("The correct answer is (D).", "D", "answer phrase"),
    ("Answer: C", "C", "answer phrase"),
    ("I would pick option A here.", "A", "answer phrase"),
    ("The best choice is **C**", "C", "answer phrase"),
    ("Looking at the picture, (B) fits best.", "B", "bracketed letter"),
    ("two dogs", "C", "option text"),
    ("It shows a dark red car.", "B", "option text"),  # the longer option wins over "a red car"
    ("There are Two Dogs!", "C", "option text"),
    ("I think C is right", "C", "lone letter"),
    ("A dog is there, so C", "C", "lone letter"),  # "A dog": the article, not option A
    ("Sorry, I cannot determine that from the image.", None, "refusal"),
    ("", None, "none"),
    ("   ", None, "none"),
    ("The image shows a landscape.", None, "none"),
    ("E", None, "none"),  # not one of the options
    ("A or B", None, "none"),  # two letters: no guess
]


@pytest.mark.parametrize("output,letter,rule", TABLE)
def test_extract_choice_table(output, letter, rule):
    assert extract_choice(output, CHOICES) == (letter, rule)


def test_every_rule_of_the_table_is_a_named_rule():
    assert {rule for _, _, rule in TABLE} <= set(RULES)
    assert set(RULES) - {"refusal", "none"} <= {rule for _, _, rule in TABLE}


def test_letters_are_limited_to_the_options_given():
    assert extract_choice("C", {"A": "yes", "B": "no"}) == (None, "none")
    assert extract_choice("The answer is C", {"A": "x", "B": "y", "C": "z"}) == ("C", "answer phrase")


@pytest.mark.parametrize(
    "output,answer,rule",
    [
        ("Yes", "yes", "first word"),
        ("no.", "no", "first word"),
        ("True", "yes", "first word"),
        ("**No**, the left image has three dogs.", "no", "first word"),
        ("The statement is false.", "no", "yes/no word"),
        ("I can't tell, sorry.", None, "refusal"),
        ("Maybe yes, maybe no", None, "none"),
        ("", None, "none"),
    ],
)
def test_extract_yes_no(output, answer, rule):
    assert extract_yes_no(output) == (answer, rule)
