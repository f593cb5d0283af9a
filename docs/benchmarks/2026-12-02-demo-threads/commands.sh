#!/usr/bin/env bash
# Every command behind docs/demo.md "Two threads (2026-12-02, fifteenth session)", run from the repository
# root with its venv active, on a 2-core Intel Xeon (AVX-512, AMX); each training run alone on the CPU
# (two torch threads, one loader process). RULE.md was committed before any of R2, V1, V2 was scored.
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-threads
C=docs/benchmarks/2026-12-02-demo-count
# 0. one thread and two write different weights; two threads write the same weights twice
owl3 demo-train /tmp/t1 --scale 0.01 --threads 1 --recipe cells-count
owl3 demo-train /tmp/t2 --scale 0.01 --threads 2 --recipe cells-count
owl3 demo-train /tmp/t2b --scale 0.01 --threads 2 --recipe cells-count
sha256sum /tmp/t1/model/model.safetensors /tmp/t2/model/model.safetensors /tmp/t2b/model/model.safetensors
# 1. R2: the fourteenth session's recipe from scratch with two threads (then the default recipe; its
#    progress lines dropped from the log)
owl3 demo-train /tmp/r2 --threads 2 --recipe cells-count 2>&1 | tr '\r' '\n' | grep -av '^\s*$' \
  | grep -av '^train sft:\|^tower:' > $D/recipe-R2.log
cp /tmp/r2/demo_train.json $D/recipe-R2-demo_train.json
# 2. V1 (count phase 1,200 steps) and V2 (video phase 1,200 steps) from R2's earlier phases
python $D/run_last.py /tmp/r2 /tmp/v1 600 1200 > /tmp/v1.out 2> /tmp/v1.err
python $D/run_last.py /tmp/r2 /tmp/v2 1200 600 > /tmp/v2.out 2> /tmp/v2.err
for v in v1 v2; do
  (cat /tmp/$v.out; tr '\r' '\n' < /tmp/$v.err | grep -av '^\s*$' | grep -av '^train sft:') > $D/recipe-${v^^}.log
  cp /tmp/$v/demo_train.json $D/recipe-${v^^}-demo_train.json
done
for r in r2 v1 v2; do sha256sum /tmp/$r/model/model.safetensors | sed "s#/tmp/$r/#OUT/#" > $D/recipe-${r^^}-sha256.txt; done
# 3. evaluations: seeds 2 and 3 (300 a row), seed 0 (the documented run, 100 a row)
for n in R2:r2 V1:v1 V2:v2; do
  m=/tmp/${n#*:}/model; n=${n%%:*}
  owl3 eval synthetic --model $m --seed 2 --images 1,8 --limit 300 --output $D/ev-$n-s2-300.jsonl > $D/ev-$n-s2-300.txt
  owl3 eval synthetic --model $m --seed 3 --images 1,8 --limit 300 --output $D/ev-$n-s3-300.jsonl > $D/ev-$n-s3-300.txt
  owl3 eval synthetic --model $m --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/ev-$n-s0-100.jsonl \
    > $D/ev-$n-s0-100.txt
done
# 4. paired comparisons: K7 (shipped before) against R2, V1, V2; R2 against V1, V2
for pair in K7:$C:R2 K7:$C:V1 K7:$C:V2 R2:$D:V1 R2:$D:V2; do
  a=${pair%%:*}; rest=${pair#*:}; ad=${rest%%:*}; b=${rest#*:}
  for s in s2-300:seed2 s3-300:seed3 s0-100:seed0; do
    (echo "\$ owl3 eval compare $ad/ev-$a-${s%%:*}.jsonl $D/ev-$b-${s%%:*}.jsonl"
     owl3 eval compare $ad/ev-$a-${s%%:*}.jsonl $D/ev-$b-${s%%:*}.jsonl) > $D/compare-$a-vs-$b-${s#*:}.txt
  done
done
# 5. V2 shipped (cp /tmp/v2/model/model.safetensors owl3/assets/demo/), then the shipped model's runs
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 100 \
  --output $D/eval-shipped-cells-more-video-limit100.jsonl --json > $D/eval-shipped-cells-more-video-limit100.txt
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 40 \
  --output $D/eval-shipped-cells-more-video-limit40.jsonl --plot docs/demo-eval.png --json \
  > $D/eval-shipped-cells-more-video-limit40.txt
owl3 demo > $D/owl3-demo-seed0.txt
# 6. the new default recipe (`cells-more-video`, two threads) from scratch through the real command
owl3 demo-train /tmp/repro 2>&1 | tr '\r' '\n' | grep -av '^\s*$' | grep -av '^train sft:\|^tower:' \
  > $D/recipe-cells-more-video-from-scratch.log
cp /tmp/repro/demo_train.json $D/recipe-cells-more-video-from-scratch-demo_train.json
sha256sum /tmp/repro/model/model.safetensors owl3/assets/demo/model.safetensors \
  > $D/recipe-cells-more-video-from-scratch-sha256.txt
# 7. seed 4 (looked at by no session before), after V2 shipped: the shipped model against K7 (the weights of
#    commit f725009, in /tmp/k7 with the same config and tokenizer files)
mkdir -p /tmp/k7 && cp owl3/assets/demo/*.json /tmp/k7/
git show f725009:owl3/assets/demo/model.safetensors > /tmp/k7/model.safetensors
owl3 eval synthetic --seed 4 --images 1,8 --limit 300 --output $D/ev-V2-s4-300.jsonl > $D/ev-V2-s4-300.txt
owl3 eval synthetic --model /tmp/k7 --seed 4 --images 1,8 --limit 300 --output $D/ev-K7-s4-300.jsonl \
  > $D/ev-K7-s4-300.txt
(echo "\$ owl3 eval compare $D/ev-K7-s4-300.jsonl $D/ev-V2-s4-300.jsonl"
 owl3 eval compare $D/ev-K7-s4-300.jsonl $D/ev-V2-s4-300.jsonl) > $D/compare-K7-vs-V2-seed4.txt
# 8. V3: move_direction 3x in the video phase (measured, not shipped: RULE.md)
python $D/run_move.py /tmp/r2 /tmp/v3 > /tmp/v3.out 2> /tmp/v3.err
(cat /tmp/v3.out; tr '\r' '\n' < /tmp/v3.err | grep -av '^\s*$' | grep -av '^train sft:') > $D/recipe-V3.log
for s in 2 3; do
  owl3 eval synthetic --model /tmp/v3/model --seed $s --images 1,8 --limit 300 --output $D/ev-V3-s$s-300.jsonl \
    > $D/ev-V3-s$s-300.txt
  (echo "\$ owl3 eval compare $D/ev-V2-s$s-300.jsonl $D/ev-V3-s$s-300.jsonl"
   owl3 eval compare $D/ev-V2-s$s-300.jsonl $D/ev-V3-s$s-300.jsonl) > $D/compare-V2-vs-V3-seed$s.txt
done
