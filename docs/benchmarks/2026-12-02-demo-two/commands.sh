#!/usr/bin/env bash
# Every command behind docs/demo.md "A count of two (2026-12-02, seventeenth session)", run from the
# repository root with its venv active, on a 2-core AMD EPYC (Zen 3: AVX2, no AVX-512), alone on the CPU.
# RULE.md (committed before G was trained) says what would ship.
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-two
O=docs/benchmarks/2026-12-02-demo-odds
T=docs/benchmarks/2026-12-02-demo-threads
C=docs/benchmarks/2026-12-02-demo-count
# 1. G: the recipe `cells-two` resumed after the shipped model (phases 1-9 the shipped run's), phase 10 here
python $D/run_two.py /tmp/g > $D/recipe-G.log 2> /tmp/g.err
cp /tmp/g/demo_train.json $D/recipe-G-demo_train.json
sha256sum /tmp/g/model/model.safetensors | sed 's#/tmp/g#OUT#' > $D/recipe-G-sha256.txt
# 2. the count probe (600 one-image count questions, teacher-forced)
python $C/count_probe.py /tmp/g/model 600 > $D/probe-G.log
# 3. paired evaluations against the shipped model (its records: $T/ev-V2-s*-300.jsonl), and F's
for s in 2 3; do
  owl3 eval synthetic --model /tmp/g/model --seed $s --images 1,8 --limit 300 --output $D/ev-G-s$s-300.jsonl \
    > $D/ev-G-s$s-300.txt
  (echo "\$ owl3 eval compare $T/ev-V2-s$s-300.jsonl $D/ev-G-s$s-300.jsonl"
   owl3 eval compare $T/ev-V2-s$s-300.jsonl $D/ev-G-s$s-300.jsonl) > $D/compare-V2-vs-G-seed$s.txt
  (echo "\$ owl3 eval compare $O/ev-F-s$s-300.jsonl $D/ev-G-s$s-300.jsonl"
   owl3 eval compare $O/ev-F-s$s-300.jsonl $D/ev-G-s$s-300.jsonl) > $D/compare-F-vs-G-seed$s.txt
done
python $O/count_misses.py $D/ev-G-s2-300.jsonl $D/ev-G-s3-300.jsonl > $D/count-misses-G-s2-s3.txt
owl3 demo --model /tmp/g/model > $D/owl3-demo-G-seed0.txt
# 4. G passed RULE.md and ships (owl3/assets/demo = /tmp/g/model): seed 0, the documented curve and plot
owl3 eval synthetic --model /tmp/g/model --seed 0 --images 1,5,8,20,50,100 --limit 100 \
  --output $D/eval-shipped-cells-two-limit100.jsonl --plot $D/eval-shipped-cells-two-limit100.png --json \
  > $D/eval-shipped-cells-two-limit100.txt
# (the plot once more after G shipped, through the default model so that its title names it: same answers)
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 40 \
  --output $D/eval-shipped-cells-two-limit40.jsonl --plot docs/demo-eval.png --json > $D/eval-shipped-cells-two-limit40.txt
(echo "\$ owl3 eval compare $T/ev-V2-s0-100.jsonl $D/eval-shipped-cells-two-limit100.jsonl"
 owl3 eval compare $T/ev-V2-s0-100.jsonl $D/eval-shipped-cells-two-limit100.jsonl) > $D/compare-V2-vs-G-seed0.txt
owl3 demo > $D/owl3-demo-shipped-seed0.txt  # the shipped model (G) through the default path
# 5. phase 10 again from the previous shipped weights (cells-more-video, V2: owl3/assets/demo up to commit
#    7aecdfc), into another folder: the same weights bit for bit?
mkdir -p /tmp/v2
for f in $(git ls-tree --name-only 7aecdfc owl3/assets/demo/); do git show 7aecdfc:$f > /tmp/v2/$(basename $f); done
python $D/run_two.py /tmp/g2 /tmp/v2 > /tmp/g2.out 2> /tmp/g2.err
sha256sum /tmp/g2/model/model.safetensors owl3/assets/demo/model.safetensors | sed 's#/tmp/g2#OUT2#' > $D/recipe-G-again-sha256.txt
# 6. P1 (RULE.md "P1"): G, then a list-heavy eleventh phase; scored against G
python $D/run_lists.py /tmp/g /tmp/p1 > $D/recipe-P1.log 2> /tmp/p1.err
cp /tmp/p1/demo_train.json $D/recipe-P1-demo_train.json
python $C/count_probe.py /tmp/p1/model 600 > $D/probe-P1.log
for s in 2 3; do
  owl3 eval synthetic --model /tmp/p1/model --seed $s --images 1,8 --limit 300 --output $D/ev-P1-s$s-300.jsonl \
    > $D/ev-P1-s$s-300.txt
  (echo "\$ owl3 eval compare $D/ev-G-s$s-300.jsonl $D/ev-P1-s$s-300.jsonl"
   owl3 eval compare $D/ev-G-s$s-300.jsonl $D/ev-P1-s$s-300.jsonl) > $D/compare-G-vs-P1-seed$s.txt
done
owl3 demo --model /tmp/p1/model > $D/owl3-demo-P1-seed0.txt
