#!/usr/bin/env bash
# Every command behind docs/demo.md "Labels after the images from the start (2026-12-02, nineteenth
# session)", run from the repository root with its venv active, on a 2-core AMD EPYC (family 26, Zen 5,
# with AVX-512: lscpu.txt), alone on the CPU (RULE.md says what was decided before each run).
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-scratch
G=docs/benchmarks/2026-12-02-demo-two
# 1. L: the whole cells-labels recipe from scratch, timed (R, the same for cells-two, was stopped after 2 min)
/usr/bin/time -v owl3 demo-train /tmp/l --recipe cells-labels > $D/recipe-L.out 2> $D/recipe-L.log
cp /tmp/l/demo_train.json $D/recipe-L-demo_train.json
# 2. L against G on the same scenes and questions (L asked in its own layout, G in the paper's)
for s in 2 3; do
  owl3 eval synthetic --model /tmp/l/model --seed $s --images 1,8 --limit 300 --output $D/ev-L-s$s-300.jsonl \
    > $D/ev-L-s$s-300.txt
  (echo "\$ owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-L-s$s-300.jsonl"
   owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-L-s$s-300.jsonl) > $D/compare-G-vs-L-seed$s.txt
done
# 3. the ambiguity count for L (G's: docs/benchmarks/2026-12-02-demo-split/ambiguity-G.txt)
python docs/benchmarks/2026-12-02-demo-split/ambiguity.py $D/ev-L-s2-300.jsonl 2 $D/ev-L-s3-300.jsonl 3 > $D/ambiguity-L.txt
# 4. R: the default cells-two from scratch, the same code, CPU and seed (after L, alone on the CPU)
/usr/bin/time -v owl3 demo-train /tmp/r > $D/recipe-R.out 2> $D/recipe-R.log
cp /tmp/r/demo_train.json $D/recipe-R-demo_train.json
for s in 2 3; do
  owl3 eval synthetic --model /tmp/r/model --seed $s --images 1,8 --limit 300 --output $D/ev-R-s$s-300.jsonl \
    > $D/ev-R-s$s-300.txt
  for a in G:$G L:$D; do
    (echo "\$ owl3 eval compare ${a#*:}/ev-${a%%:*}-s$s-300.jsonl $D/ev-R-s$s-300.jsonl"
     owl3 eval compare ${a#*:}/ev-${a%%:*}-s$s-300.jsonl $D/ev-R-s$s-300.jsonl) > $D/compare-${a%%:*}-vs-R-seed$s.txt
  done
done
python docs/benchmarks/2026-12-02-demo-split/ambiguity.py $D/ev-R-s2-300.jsonl 2 $D/ev-R-s3-300.jsonl 3 > $D/ambiguity-R.txt
# (R finished after the nineteenth session ended; steps 4-6 from here on ran the next session, 2026-12-03,
#  on the same Zen 5 CPU. recipe-R.log is R's stderr with the progress-bar lines left out.)
# 5. R's other two conditions: the count probe and the demo
python docs/benchmarks/2026-12-02-demo-count/count_probe.py /tmp/r/model 600 > $D/probe-R.log
owl3 demo --model /tmp/r/model > $D/owl3-demo-R-seed0.txt
# 6. R passed RULE.md and ships (owl3/assets/demo/model.safetensors = /tmp/r/model's; the other files are
#    byte-identical): seed 0, the documented curve and plot through the default model, and the demo
cp /tmp/r/model/model.safetensors owl3/assets/demo/model.safetensors
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/eval-shipped-R-limit100.jsonl \
  --plot docs/demo-eval.png --json > $D/eval-shipped-R-limit100.txt
cp docs/demo-eval.png $D/eval-shipped-R-limit100.png
(echo "\$ owl3 eval compare $G/eval-shipped-cells-two-limit100.jsonl $D/eval-shipped-R-limit100.jsonl"
 owl3 eval compare $G/eval-shipped-cells-two-limit100.jsonl $D/eval-shipped-R-limit100.jsonl) > $D/compare-G-vs-R-seed0.txt
owl3 demo > $D/owl3-demo-shipped-seed0.txt
