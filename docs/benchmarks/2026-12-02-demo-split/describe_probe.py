"""How well a model answers `describe` ("What do you see?") about one picture and about Image X among N:
exact answers, and of the objects it names (colour and shape) how many image X shows (precision), and of
image X's objects how many it names (recall).

    python describe_probe.py MODEL [N_QUESTIONS] [IMAGES...]     (default 100 questions, 1 and 8 images)

Questions from the seed "describe-probe:N" (the evaluation never asks this kind); greedy, 40 new tokens."""
import random
import sys
from collections import Counter

import owl3
from owl3.demo.questions import DESCRIBE, multi_question


def names(answer: str) -> Counter:
    return Counter(answer.strip().removeprefix("I see ").rstrip(".").replace(" and ", ", ").split(", "))


model = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
counts = [int(a) for a in sys.argv[3:]] or [1, 8]
pipe = owl3.load(model)
print("images | questions | exact | precision | recall")
for images in counts:
    rng = random.Random(f"describe-probe:{images}")
    exact = right = named = total = 0
    for _ in range(n):
        q = multi_question(rng, images, DESCRIBE)
        said = pipe.chat(q.prompt, images=q.render_images(), max_new_tokens=40)
        want, got = names(q.answer), names(said)
        exact += said.strip() == q.answer
        right += sum((want & got).values())
        named += sum(got.values())
        total += sum(want.values())
    print(f"{images} | {n} | {exact / n:.2f} | {right / max(named, 1):.2f} | {right / total:.2f}")
