#!/usr/bin/env bash
# Every command behind docs/demo.md "Both heads look back (2026-12-03, twentieth session)", run from the
# repository root with its venv active, on a 2-core AMD EPYC (family 26, Zen 5, with AVX-512: lscpu.txt),
# the nineteenth session's CPU, alone on the CPU while A and R1 trained (RULE.md says what was decided before).
set -euo pipefail
D=docs/benchmarks/2026-12-03-demo-recency
S=docs/benchmarks/2026-12-02-demo-scratch  # R's records (the shipped model)

# train NAME ARGS...: `owl3 demo-train /tmp/name ARGS`, timed; its log (progress-bar lines left out) and
# demo_train.json copied here as recipe-NAME.*
train() {
  local name=$1 out=/tmp/${1,,}
  shift
  mkdir -p /tmp/${name,,}log
  /usr/bin/time -v owl3 demo-train $out "$@" > /tmp/${name,,}log/out.txt 2> /tmp/${name,,}log/err.txt
  tr '\r' '\n' < /tmp/${name,,}log/err.txt | grep -v "^train sft: .*step/s" | sed '/^\s*$/d' > $D/recipe-$name.log
  cp $out/demo_train.json $D/recipe-$name-demo_train.json
}
# score NAME: /tmp/name/model against R on the same scenes and questions (seeds 2 and 3), and the ambiguity count
score() {
  local name=$1
  for s in 2 3; do
    owl3 eval synthetic --model /tmp/${name,,}/model --seed $s --images 1,8 --limit 300 \
      --output $D/ev-$name-s$s-300.jsonl > $D/ev-$name-s$s-300.txt
    (echo "\$ owl3 eval compare $S/ev-R-s$s-300.jsonl $D/ev-$name-s$s-300.jsonl"
     owl3 eval compare $S/ev-R-s$s-300.jsonl $D/ev-$name-s$s-300.jsonl) > $D/compare-R-vs-$name-seed$s.txt
  done
  python docs/benchmarks/2026-12-02-demo-split/ambiguity.py $D/ev-$name-s2-300.jsonl 2 \
    $D/ev-$name-s3-300.jsonl 3 > $D/ambiguity-$name.txt
}

# 0. the first hyper layer's shares after each image in R (read while A trained; seconds, one thread)
python benchmarks/demo_probe/summary_probe.py owl3/assets/demo --images 8 --n 20 > $D/summary-R.txt
# 1. A: cells-all-recency, from R's init and tower phase (the same bytes the command writes first on this CPU)
mkdir -p /tmp/a && cp -r /tmp/r/init /tmp/r/phase-1-tower /tmp/r/demo_train.json /tmp/a/
train A --recipe cells-all-recency
# 2. A against R, and A's shares
score A
python benchmarks/demo_probe/summary_probe.py /tmp/a/model --images 8 --n 20 > $D/summary-A.txt
# 3. every phase's model of R and of A at seed 2 (how the scores grow through the recipe)
mkdir -p /tmp/phev
(echo "run phase one_image eight_images video which  (owl3 eval synthetic --model /tmp/RUN/PHASE --seed 2 --images 1,8 --limit 300; accuracies)"
 for run in r a; do for ph in /tmp/$run/phase-{3-single,4-binding,6-all,7-weak,8-video,9-count,10-two}; do
   owl3 eval synthetic --model $ph --seed 2 --images 1,8 --limit 300 --output /tmp/phev/$run-$(basename $ph).jsonl \
     --json 2>/dev/null | tail -1 | python -c "
import json, sys
d = json.loads(sys.stdin.read()); r = {x['images']: x['accuracy'] for x in d['results']}
print('$run', '$(basename $ph)', r[1], r[8], d['video']['accuracy'], d['which']['accuracy'])"
 done; done) > $D/phases-seed2.txt
# 4. R1: the default recipe at seed 1, a control (RULE.md), against R on the same questions
train R1 --seed 1
score R1
