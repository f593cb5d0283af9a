#!/usr/bin/env bash
# Every command behind docs/demo.md "Is there a blue square? (2026-11-27, eleventh session)", run from this
# folder with the repository's venv active; M = the shipped model (owl3/assets/demo, recipe `bound`).
set -euo pipefail
M=../../../owl3/assets/demo
# 1. the probe of the shipped model: where the exists answer is lost (800 questions; 8 = the tokens from the
#    colour word to the deciding position)
python exists_probe.py $M 800 8 > exists-bound.log
# 2. 300 steps of one-image questions, half of them exists, from the shipped model (lr 1e-3, tower frozen):
#    S0 control, S1 + layer-3 look at the colour word, S2 + that and the absence look, S3 the absence look only
python exists_supervision.py $M /tmp/x/S0 300 0.0 > S0.log
python exists_supervision.py $M /tmp/x/S1 300 1.0 > S1.log
python exists_supervision.py $M /tmp/x/S2 300 1.0 3 0.5 1.0 > S2.log
python exists_supervision.py $M /tmp/x/S3 300 0.0 3 0.5 1.0 > S3.log
python exists_probe.py /tmp/x/S0 800 > exists-S0.log
python exists_probe.py /tmp/x/S1 800 > exists-S1.log
for s in S0 S2 S3; do
  owl3 eval synthetic --model /tmp/x/$s --seed 1 --images 1 --limit 300 --video-frames 0 --which-images 0 \
    --output ev1-$s.jsonl
done
# 3. 300 more steps of the recipe's last phase at a gentle lr on the shipped model: as it is (R0) and with
#    absence targets and the weak one-image kinds drawn more (R1)
python repair.py /tmp/x/R0 300 control > recipe-R0.log
python repair.py /tmp/x/R1 300 absent > recipe-R1.log
# 4. two recipes from scratch (two at a time on the CPU). HB: `bound` with batches of 16, twice the steps,
#    lr / sqrt(2). TF: the tenth session's H (W + focus + remix) with W's binding and last phases cut to fit
#    the hour; it reused HB's first two phase folders (init, tower, recency: the same seeds and phases), so
#    its tower time is HB's.
python half_batch.py /tmp/x/HB 1 > recipe-HB.log
mkdir -p /tmp/x/TF && cp -r /tmp/x/HB/init /tmp/x/HB/phase-1-tower /tmp/x/HB/phase-2-recency /tmp/x/TF/
python twice_focus.py /tmp/x/TF 1 > recipe-TF.log
for s in HB TF; do
  owl3 eval synthetic --model /tmp/x/$s/model --seed 0 --images 1,5,8,20,50,100 --limit 100 \
    --output ev-$s.jsonl > ev-$s.txt   # TF: asked in its own layout (question_twice, demo_layout.json)
  owl3 eval compare ../2026-11-27-demo-binding/eval-shipped-bound-limit100.jsonl ev-$s.jsonl
done
# 5. H itself from scratch (W's full phases + focus + remix), alone on the CPU with two torch threads: does
#    the tenth session's H fit the hour on an otherwise idle 2-core machine?
python twice_focus.py /tmp/x/HF 2 full > recipe-HF.log
owl3 eval synthetic --model /tmp/x/HF/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --output ev-HF.jsonl > ev-HF.txt
owl3 eval compare ../2026-11-27-demo-binding/eval-shipped-bound-limit100.jsonl ev-HF.jsonl
