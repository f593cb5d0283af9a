#!/usr/bin/env bash
# Every command behind docs/demo.md "How many? (2026-12-02, fourteenth session)", run from the repository
# root with its venv active, on a 2-core Intel Xeon (AVX-512, AMX); one torch thread per training run.
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-count
V=docs/benchmarks/2026-12-02-demo-video
# 0. the probe of the counts, on the shipped `cells-video` model (owl3/assets/demo until step 5 replaced it)
python $D/count_probe.py owl3/assets/demo 600 > $D/probe-shipped.log
# 1. phase-9 variants from the shipped weights (K0, then K1 + K2 beside it, K3 + K4, then K5 beside the
#    from-scratch run of step 5; K6, K0 with long lists, was stopped at step 75 to give K5 the CPU); the logs
#    keep the lines that are not blank
for r in K0:counts K1:balance K2:balance-look K3:look K4:video K5:look-long; do
  python $D/run_count.py /tmp/cp/${r%%:*} ${r#*:} 2>&1 | tr '\r' '\n' | grep -av '^\s*$' > $D/recipe-${r%%:*}.log
done
for v in K0 K1 K2 K3 K4 K5; do cp /tmp/cp/$v/demo_train.json $D/recipe-$v-demo_train.json; done
# 2. seed 2 (the questions the choice was made on), 300 a row, paired against the shipped model
for v in K0 K1 K2 K3 K4 K5; do
  owl3 eval synthetic --model /tmp/cp/$v/model --seed 2 --images 1,8 --limit 300 --output $D/ev-$v-s2-300.jsonl \
    > $D/ev-$v-s2-300.txt
  (echo "\$ owl3 eval compare $V/ev-R-s2-300.jsonl $D/ev-$v-s2-300.jsonl"
   owl3 eval compare $V/ev-R-s2-300.jsonl $D/ev-$v-s2-300.jsonl) > $D/compare-shipped-vs-$v-seed2.txt
done
#    seed 3 (never looked at before) and seed 0 (the documented run), for the shipped model and K0, K3, K5
owl3 eval synthetic --seed 3 --images 1,8 --limit 300 --output $D/ev-shipped-s3-300.jsonl > $D/ev-shipped-s3-300.txt
for v in K0 K3 K5; do
  owl3 eval synthetic --model /tmp/cp/$v/model --seed 3 --images 1,8 --limit 300 --output $D/ev-$v-s3-300.jsonl \
    > $D/ev-$v-s3-300.txt
  (echo "\$ owl3 eval compare $D/ev-shipped-s3-300.jsonl $D/ev-$v-s3-300.jsonl"
   owl3 eval compare $D/ev-shipped-s3-300.jsonl $D/ev-$v-s3-300.jsonl) > $D/compare-shipped-vs-$v-seed3.txt
  owl3 eval synthetic --model /tmp/cp/$v/model --seed 0 --images 1,5,8,20,50,100 --limit 100 \
    --output $D/ev-$v-s0-100.jsonl > $D/ev-$v-s0-100.txt
  (echo "\$ owl3 eval compare $V/eval-shipped-cells-video-limit100.jsonl $D/ev-$v-s0-100.jsonl"
   owl3 eval compare $V/eval-shipped-cells-video-limit100.jsonl $D/ev-$v-s0-100.jsonl) > $D/compare-shipped-vs-$v-seed0.txt
done
for s in 2 3; do
  (echo "\$ owl3 eval compare $D/ev-K0-s$s-300.jsonl $D/ev-K3-s$s-300.jsonl"
   owl3 eval compare $D/ev-K0-s$s-300.jsonl $D/ev-K3-s$s-300.jsonl) > $D/compare-K0-vs-K3-seed$s.txt
done
python $D/count_probe.py /tmp/cp/K0/model 600 > $D/probe-K0.log
python $D/count_probe.py /tmp/cp/K3/model 600 > $D/probe-K3.log
python $D/count_probe.py /tmp/cp/K5/model 600 > $D/probe-K5.log
# 4. K7: K5 with the video count look (beside the from-scratch run of step 5), then its evaluations
python $D/run_count.py /tmp/cp/K7 look-long-video 2>&1 | tr '\r' '\n' | grep -av '^\s*$' > $D/recipe-K7.log
cp /tmp/cp/K7/demo_train.json $D/recipe-K7-demo_train.json
owl3 eval synthetic --model /tmp/cp/K7/model --seed 2 --images 1,8 --limit 300 --output $D/ev-K7-s2-300.jsonl > $D/ev-K7-s2-300.txt
owl3 eval synthetic --model /tmp/cp/K7/model --seed 3 --images 1,8 --limit 300 --output $D/ev-K7-s3-300.jsonl > $D/ev-K7-s3-300.txt
owl3 eval synthetic --model /tmp/cp/K7/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/ev-K7-s0-100.jsonl \
  > $D/ev-K7-s0-100.txt
(echo "\$ owl3 eval compare $V/ev-R-s2-300.jsonl $D/ev-K7-s2-300.jsonl"
 owl3 eval compare $V/ev-R-s2-300.jsonl $D/ev-K7-s2-300.jsonl) > $D/compare-shipped-vs-K7-seed2.txt
(echo "\$ owl3 eval compare $D/ev-shipped-s3-300.jsonl $D/ev-K7-s3-300.jsonl"
 owl3 eval compare $D/ev-shipped-s3-300.jsonl $D/ev-K7-s3-300.jsonl) > $D/compare-shipped-vs-K7-seed3.txt
(echo "\$ owl3 eval compare $V/eval-shipped-cells-video-limit100.jsonl $D/ev-K7-s0-100.jsonl"
 owl3 eval compare $V/eval-shipped-cells-video-limit100.jsonl $D/ev-K7-s0-100.jsonl) > $D/compare-shipped-vs-K7-seed0.txt
for s in s2-300:seed2 s3-300:seed3 s0-100:seed0; do
  (echo "\$ owl3 eval compare $D/ev-K5-${s%%:*}.jsonl $D/ev-K7-${s%%:*}.jsonl"
   owl3 eval compare $D/ev-K5-${s%%:*}.jsonl $D/ev-K7-${s%%:*}.jsonl) > $D/compare-K5-vs-K7-${s#*:}.txt
done
# 5. the recipe from scratch through the real command: phases 1-8 (`cells-video`, before `cells-count` became
#    the default; beside steps 1-4), then phase 9 with K5's phase as the recipe's, then again with K7's (alone)
owl3 demo-train /tmp/repro --recipe cells-video 2>&1 | tr '\r' '\n' | grep -av '^train sft\|^\s*$\|^tower step' \
  > $D/recipe-cells-video-again-from-scratch.log
cp /tmp/repro/demo_train.json $D/recipe-cells-video-again-from-scratch-demo_train.json
sha256sum /tmp/repro/phase-8-video/model.safetensors owl3/assets/demo/model.safetensors > $D/recipe-cells-video-again-sha256.txt
owl3 demo-train /tmp/repro 2>&1 | tr '\r' '\n' | grep -av '^train sft\|^\s*$\|^tower step' \
  > $D/recipe-cells-count-K5-phase9.log                 # the recipe's phase 9 then being K5's
cp /tmp/repro/demo_train.json $D/recipe-cells-count-K5-phase9-demo_train.json
sha256sum /tmp/repro/phase-9-count/model.safetensors /tmp/cp/K5/phase-9-count/model.safetensors > $D/recipe-K5-phase9-sha256.txt
rm -rf /tmp/repro/phase-9-count /tmp/repro/data/count
owl3 demo-train /tmp/repro 2>&1 | tr '\r' '\n' | grep -av '^train sft\|^\s*$\|^tower step' \
  > $D/recipe-cells-count-phase9.log                    # the recipe as committed (K7's phase), alone
cp /tmp/repro/demo_train.json $D/recipe-cells-count-phase9-demo_train.json
cp /tmp/repro/model/model.safetensors owl3/assets/demo/model.safetensors
sha256sum /tmp/repro/model/model.safetensors owl3/assets/demo/model.safetensors /tmp/cp/K7/phase-9-count/model.safetensors \
  > $D/recipe-cells-count-phase9-sha256.txt
# 6. the shipped model (K7): evaluation, the plot, `owl3 demo`, the probe
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/eval-shipped-cells-count-limit100.jsonl \
  --json > $D/eval-shipped-cells-count-limit100.txt
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 40 --output $D/eval-shipped-cells-count-limit40.jsonl \
  --plot docs/demo-eval.png --json > $D/eval-shipped-cells-count-limit40.txt
owl3 demo > $D/owl3-demo-seed0.txt
python $D/count_probe.py owl3/assets/demo 600 > $D/probe-K7.log
# 7. after K7 shipped: its phase at 450 steps (alone on the CPU), paired against K7
python $D/run_count.py /tmp/cp/K8 look-long-video 450 2>&1 | tr '\r' '\n' | grep -av '^\s*$' > $D/recipe-K8.log
cp /tmp/cp/K8/demo_train.json $D/recipe-K8-demo_train.json
owl3 eval synthetic --model /tmp/cp/K8/model --seed 2 --images 1,8 --limit 300 --output $D/ev-K8-s2-300.jsonl > $D/ev-K8-s2-300.txt
owl3 eval synthetic --model /tmp/cp/K8/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/ev-K8-s0-100.jsonl \
  > $D/ev-K8-s0-100.txt
for s in s2-300:seed2 s0-100:seed0; do
  (echo "\$ owl3 eval compare $D/ev-K7-${s%%:*}.jsonl $D/ev-K8-${s%%:*}.jsonl"
   owl3 eval compare $D/ev-K7-${s%%:*}.jsonl $D/ev-K8-${s%%:*}.jsonl) > $D/compare-K7-vs-K8-${s#*:}.txt
done
