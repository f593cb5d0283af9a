#!/usr/bin/env bash
# Every command behind docs/demo.md "A phase for the videos (2026-12-02, thirteenth session)", run from the
# repository root with its venv active, on a 2-core Intel Xeon (AVX-512); one torch thread per training run.
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-video
C=docs/benchmarks/2026-11-28-demo-cells
# 0. the shipped `cells` model answers the twelfth session's seed-2 questions exactly as recorded on its machine
owl3 eval synthetic --seed 2 --images 1,8 --limit 300 --output $D/ev-shipped-cells-s2-300.jsonl \
  > $D/ev-shipped-cells-s2-300.txt
(echo "\$ owl3 eval compare $C/ev-G-s2-300.jsonl $D/ev-shipped-cells-s2-300.jsonl"
 owl3 eval compare $C/ev-G-s2-300.jsonl $D/ev-shipped-cells-s2-300.jsonl) > $D/shipped-cells-s2-same-as-recorded.txt
# 1. phase-8 variants from the shipped weights (two at a time on the CPU: A with B, C with D, then E alone
#    beside the start of step 3); the logs keep the lines between the step lines
python $D/run_video.py /tmp/vp/A plain > $D/recipe-A.log
python $D/run_video.py /tmp/vp/B turns > $D/recipe-B.log          # = --recipe cells-video's last phase
python $D/run_video.py /tmp/vp/C turns-video > $D/recipe-C.log
python $D/run_video.py /tmp/vp/D turns5 > $D/recipe-D.log
python $D/run_video.py /tmp/vp/E turns 1200 > $D/recipe-E.log
for v in A B C D E; do cp /tmp/vp/$v/demo_train.json $D/recipe-$v-demo_train.json; done
# 2. seed 2, 300 questions a row, paired against the shipped model; B also at seed 0 (100 a row)
S=$D/ev-shipped-cells-s2-300.jsonl
for v in A B C D E; do
  owl3 eval synthetic --model /tmp/vp/$v/model --seed 2 --images 1,8 --limit 300 --output $D/ev-$v-s2-300.jsonl \
    > $D/ev-$v-s2-300.txt
  (echo "\$ owl3 eval compare $S $D/ev-$v-s2-300.jsonl"; owl3 eval compare $S $D/ev-$v-s2-300.jsonl) \
    > $D/compare-shipped-vs-$v-seed2.txt
done
(echo "\$ owl3 eval compare $D/ev-B-s2-300.jsonl $D/ev-E-s2-300.jsonl"
 owl3 eval compare $D/ev-B-s2-300.jsonl $D/ev-E-s2-300.jsonl) > $D/compare-B-vs-E-seed2.txt
owl3 eval synthetic --model /tmp/vp/B/model --seed 0 --images 1,5,8,20,50,100 --limit 100 \
  --output $D/ev-B-s0-100.jsonl > $D/ev-B-s0-100.txt
(echo "\$ owl3 eval compare $C/eval-shipped-cells-limit100.jsonl $D/ev-B-s0-100.jsonl"
 owl3 eval compare $C/eval-shipped-cells-limit100.jsonl $D/ev-B-s0-100.jsonl) > $D/compare-shipped-vs-B-seed0.txt
# 3. the recipe from scratch through the real command (--recipe cells-video by default; its tower, single and
#    binding phases beside run E): R7 = its phase 7 (`cells` again on this CPU), R = its model, shipped
owl3 demo-train /tmp/repro 2>&1 | tr '\r' '\n' | grep -av '^train sft\|^\s*$\|^tower step' \
  > $D/recipe-cells-video-from-scratch.log
cp /tmp/repro/demo_train.json $D/recipe-cells-video-from-scratch-demo_train.json
cp /tmp/repro/model/model.safetensors owl3/assets/demo/model.safetensors
sha256sum /tmp/repro/model/model.safetensors owl3/assets/demo/model.safetensors > $D/recipe-cells-video-from-scratch-sha256.txt
owl3 eval synthetic --model /tmp/repro/phase-7-weak --seed 2 --images 1,8 --limit 300 --output $D/ev-R7-s2-300.jsonl \
  > $D/ev-R7-s2-300.txt
owl3 eval synthetic --model /tmp/repro/model --seed 2 --images 1,8 --limit 300 --output $D/ev-R-s2-300.jsonl \
  > $D/ev-R-s2-300.txt
for pair in "$S R" "$S R7" "$D/ev-R7-s2-300.jsonl R" "$D/ev-B-s2-300.jsonl R"; do
  set -- $pair
  n=$(basename $1 .jsonl | sed 's/ev-//; s/-s2-300//; s/shipped-cells/shipped/')
  (echo "\$ owl3 eval compare $1 $D/ev-$2-s2-300.jsonl"; owl3 eval compare $1 $D/ev-$2-s2-300.jsonl) \
    > $D/compare-$n-vs-$2-seed2.txt
done
# 4. the shipped model (R): evaluation, the plot, `owl3 demo`
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/eval-shipped-cells-video-limit100.jsonl \
  --json > $D/eval-shipped-cells-video-limit100.txt
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 40 --output $D/eval-shipped-cells-video-limit40.jsonl \
  --plot docs/demo-eval.png --json > $D/eval-shipped-cells-video-limit40.txt
(echo "\$ owl3 eval compare $C/eval-shipped-cells-limit100.jsonl $D/eval-shipped-cells-video-limit100.jsonl"
 owl3 eval compare $C/eval-shipped-cells-limit100.jsonl $D/eval-shipped-cells-video-limit100.jsonl) \
  > $D/compare-shipped-vs-R-seed0.txt
owl3 demo > $D/owl3-demo-seed0.txt
# 5. one training step, float32 against bf16 autocast, one and two threads (alone on the CPU); the matrix
#    products of one SwiGLU layer in float32 and bfloat16
python -m owl3.demo data /tmp/prof/bind --rows 640 --mix binding
for a in "1" "1 bf16" "2" "2 bf16"; do
  python $C/profile_step.py owl3/assets/demo /tmp/prof/bind/binding.jsonl $a 2>/dev/null
done > $D/profile-step.log
python $D/bf16_matmul.py > $D/bf16-matmul.log
python $D/bf16_ops.py owl3/assets/demo /tmp/prof/bind/binding.jsonl 2>/dev/null > $D/bf16-ops.log
# 6. a second video phase from R (side by side): P the same phase again, Q with Mix.count_look
python $D/run_phase9.py /tmp/p9/P again | grep -av '^step \|^owl3 train' > $D/recipe-P.log
python $D/run_phase9.py /tmp/p9/Q count | grep -av '^step \|^owl3 train' > $D/recipe-Q.log
for v in P Q; do
  cp /tmp/p9/$v/demo_train.json $D/recipe-$v-demo_train.json
  owl3 eval synthetic --model /tmp/p9/$v/model --seed 2 --images 1,8 --limit 300 --output $D/ev-$v-s2-300.jsonl \
    > $D/ev-$v-s2-300.txt
  (echo "\$ owl3 eval compare $D/ev-R-s2-300.jsonl $D/ev-$v-s2-300.jsonl"
   owl3 eval compare $D/ev-R-s2-300.jsonl $D/ev-$v-s2-300.jsonl) > $D/compare-R-vs-$v-seed2.txt
done
# 7. phase 8 again from R7, beside a variant: V0 the recipe's phase (R's weights again?), V1 more list rows
python $D/run_phase8.py /tmp/p8/V0 same | grep -av '^step \|^owl3 train' > $D/recipe-V0.log
python $D/run_phase8.py /tmp/p8/V1 lists | grep -av '^step \|^owl3 train' > $D/recipe-V1.log
for v in V0 V1; do cp /tmp/p8/$v/demo_train.json $D/recipe-$v-demo_train.json; done
sha256sum /tmp/p8/V0/model/model.safetensors /tmp/repro/model/model.safetensors > $D/recipe-V0-sha256.txt
owl3 eval synthetic --model /tmp/p8/V1/model --seed 2 --images 1,8 --limit 300 --output $D/ev-V1-s2-300.jsonl \
  > $D/ev-V1-s2-300.txt
(echo "\$ owl3 eval compare $D/ev-R-s2-300.jsonl $D/ev-V1-s2-300.jsonl"
 owl3 eval compare $D/ev-R-s2-300.jsonl $D/ev-V1-s2-300.jsonl) > $D/compare-R-vs-V1-seed2.txt
