#!/usr/bin/env bash
# Every command behind docs/demo.md "How many? (2026-12-02, fourteenth session)", run from the repository
# root with its venv active, on a 2-core Intel Xeon (AVX-512, AMX); one torch thread per training run.
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-count
V=docs/benchmarks/2026-12-02-demo-video
# 0. the probe of the counts, on the shipped (`cells-video`) model
python $D/count_probe.py owl3/assets/demo 600 > $D/probe-shipped.log
# 1. phase-9 variants from the shipped weights (K0 alone, then K1 + K2 beside it, K3 + K4, then K5 beside
#    the recipe's from-scratch run of step 3; K6, K0 with long lists, was stopped at step 75 to give K5 the CPU)
python $D/run_count.py /tmp/cp/K0 counts
python $D/run_count.py /tmp/cp/K1 balance
python $D/run_count.py /tmp/cp/K2 balance-look
python $D/run_count.py /tmp/cp/K3 look
python $D/run_count.py /tmp/cp/K4 video
python $D/run_count.py /tmp/cp/K5 look-long
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
