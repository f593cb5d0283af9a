#!/usr/bin/env bash
# Every command behind docs/demo.md "The answer does not know X (2026-12-03, twenty-first session)", run
# from the repository root with its venv active, on a 2-core AMD EPYC (family 26, Zen 5, with AVX-512:
# lscpu.txt). /tmp/r, /tmp/l and /tmp/a are the runs R (shipped), L and A of the two sessions before
# (docs/benchmarks/2026-12-02-demo-scratch, 2026-12-03-demo-recency), every phase's model kept.
set -euo pipefail
D=docs/benchmarks/2026-12-03-demo-copy
S=docs/benchmarks/2026-12-02-demo-scratch  # R's and L's records
P=benchmarks/demo_probe

# score NAME MODEL BASE...: MODEL at seeds 2 and 3 (300 questions a row), compared with each BASE's records
score() {
  local name=$1 model=$2
  shift 2
  for s in 2 3; do
    owl3 eval synthetic --model $model --seed $s --images 1,8 --limit 300 \
      --output $D/ev-$name-s$s-300.jsonl > $D/ev-$name-s$s-300.txt
    for base in "$@"; do
      local b=${base##*/}
      (echo "\$ owl3 eval compare $base-s$s-300.jsonl $D/ev-$name-s$s-300.jsonl"
       owl3 eval compare $base-s$s-300.jsonl $D/ev-$name-s$s-300.jsonl) > $D/compare-${b#ev-}-vs-$name-seed$s.txt
    done
  done
}
# probes NAME MODEL LAYOUT: does the answer know X, where does it look, what the after-tokens hold
probes() {
  python $P/knows_x.py $2 --layout $3 > $D/knows-x-$1.log
  for kind in colour word; do
    python $P/answer_look.py $2 --kind $kind --layout $3 > $D/look-$1-$kind.log
  done
}

# 1. the shipped model R, L (labels after the images) and A (both heads look back)
probes R /tmp/r/model official
probes L /tmp/l/model label_after
python $P/after_readout.py /tmp/r/model > $D/readout-R.log
python $P/after_readout.py /tmp/a/model > $D/readout-A.log
# 2. phase 10 again from phase 9 with the label targets (benchmarks/demo_probe/phase_again.py; C10 was run
#    as `owl3 demo-train /tmp/c10 --recipe cells-copy` on such a copy, the same phases and defaults; two torch
#    threads for C10 and AC, which ran alone; one each for C1 and LC, which ran at the same time)
python $P/phase_again.py /tmp/r /tmp/c10 copy
python $P/phase_again.py /tmp/r /tmp/c1 copy-one 1 &
python $P/phase_again.py /tmp/l /tmp/lc10 labels-copy 1
wait
python $P/phase_again.py /tmp/a /tmp/ac10 all-copy
for run in c10 c1 lc10 ac10; do cp /tmp/$run/demo_train.json $D/phase-again-${run^^}-demo_train.json; done
score C10 /tmp/c10/model $S/ev-R
score C1 /tmp/c1/model $S/ev-R
score LC10 /tmp/lc10/model $S/ev-R $S/ev-L
score AC10 /tmp/ac10/model $S/ev-R docs/benchmarks/2026-12-03-demo-recency/ev-A
probes C10 /tmp/c10/model official
probes LC10 /tmp/lc10/model label_after
# 3. C: the recipe cells-copy from R's first three phases (RULE.md, written before C finished)
mkdir -p /tmp/c /tmp/clog
cp -r /tmp/r/init /tmp/r/phase-1-tower /tmp/r/phase-2-recency /tmp/r/phase-3-single /tmp/r/demo_train.json /tmp/c/
/usr/bin/time -v owl3 demo-train /tmp/c --recipe cells-copy > /tmp/clog/out.txt 2> /tmp/clog/err.txt
tr '\r' '\n' < /tmp/clog/err.txt | grep -v "^train sft: .*step/s" | sed '/^\s*$/d' > $D/recipe-C.log
cp /tmp/c/demo_train.json $D/recipe-C-demo_train.json
score C /tmp/c/model $S/ev-R
probes C /tmp/c/model official
python $P/after_readout.py /tmp/c/model > $D/readout-C.log
# 4. where C gains and loses, per question kind (kinds-R-vs-C.txt)
(cd $D && for row in 1 8; do python kinds.py $row R-s2=../2026-12-02-demo-scratch/ev-R-s2-300.jsonl \
  C-s2=ev-C-s2-300.jsonl R-s3=../2026-12-02-demo-scratch/ev-R-s3-300.jsonl C-s3=ev-C-s3-300.jsonl; done) \
  > $D/kinds-R-vs-C.txt
# 5. C2: cells-copy-head from R's first three phases (RULE.md, written before C2 started), alone on the CPU
mkdir -p /tmp/c2 /tmp/c2log
cp -r /tmp/r/init /tmp/r/phase-1-tower /tmp/r/phase-2-recency /tmp/r/phase-3-single /tmp/r/demo_train.json /tmp/c2/
/usr/bin/time -v owl3 demo-train /tmp/c2 --recipe cells-copy-head > /tmp/c2log/out.txt 2> /tmp/c2log/err.txt
tr '\r' '\n' < /tmp/c2log/err.txt | grep -v "^train sft: .*step/s" | sed '/^\s*$/d' > $D/recipe-C2.log
cp /tmp/c2/demo_train.json $D/recipe-C2-demo_train.json
score C2 /tmp/c2/model $S/ev-R $D/ev-C
(cd $D && for row in 1 8; do python kinds.py $row R-s2=../2026-12-02-demo-scratch/ev-R-s2-300.jsonl \
  C2-s2=ev-C2-s2-300.jsonl R-s3=../2026-12-02-demo-scratch/ev-R-s3-300.jsonl C2-s3=ev-C2-s3-300.jsonl; done) \
  > $D/kinds-R-vs-C2.txt
# 6. C2's curve at seed 0, 100 questions a row (README's R figures are the same command on R)
owl3 eval synthetic --model /tmp/c2/model --seed 0 --images 1,5,8,20,50,100 --limit 100 \
  --output $D/ev-C2-seed0-limit100.jsonl --plot $D/ev-C2-seed0-limit100.png > $D/ev-C2-seed0-limit100.txt
# 7. where C2's one-image counts are lost: its ninth phase's model at seed 2, per kind beside C2 and R
owl3 eval synthetic --model /tmp/c2/phase-9-count --seed 2 --images 1,8 --limit 300 \
  --output $D/ev-C2phase9-s2-300.jsonl > /dev/null
(cd $D && for row in 1 8; do python kinds.py $row C2-phase9=ev-C2phase9-s2-300.jsonl C2=ev-C2-s2-300.jsonl \
  R=../2026-12-02-demo-scratch/ev-R-s2-300.jsonl; done) > $D/kinds-C2-phase9-vs-10.txt
# 8. C2P: C2's last phase again from its ninth model, one-image counts drawn as the world does (no
#    balanced counts), against C2 and R on the same questions
python $P/phase_again.py /tmp/c2 /tmp/c2p copy-head-plain-counts
cp /tmp/c2p/demo_train.json $D/phase-again-C2P-demo_train.json
score C2P /tmp/c2p/model $S/ev-R $D/ev-C2
