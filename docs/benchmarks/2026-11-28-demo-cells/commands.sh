#!/usr/bin/env bash
# Every command behind docs/demo.md "One token per cell (2026-11-28, twelfth session)", run from the repository
# root with its venv active. Two or three runs shared the 2-core CPU at a time, one torch thread each.
set -euo pipefail
D=docs/benchmarks/2026-11-28-demo-cells
# 0. one training step of `bound`'s binding rows on 14-px and 28-px patches (the weights do not matter for time:
#    `bound` as shipped before this session, and a random demo-cells checkpoint); CPU shared with a test run
python -m owl3.demo data /tmp/prof/bind --rows 640 --mix binding
mkdir -p /tmp/prof/bound && git archive 1cc91f3 owl3/assets/demo | tar x -C /tmp/prof/bound
python -m owl3.demo init /tmp/prof/cells-init --preset demo-cells
python $D/profile_step.py /tmp/prof/bound/owl3/assets/demo /tmp/prof/bind/binding.jsonl > $D/profile-step.log
python $D/profile_step.py /tmp/prof/cells-init /tmp/prof/bind/binding.jsonl >> $D/profile-step.log
python -c "import owl3; from owl3.demo.model import n_params; print(n_params(owl3.load().model))"  # 2,330,496
# 1. the tower alone (owl3.demo.tower's per-patch objective, batches of 64): 28-px patches (9 tokens, one per
#    cell) against the 14-px patches of the `demo` preset (36 tokens)
python benchmarks/demo_probe/tower_pretrain_variants.py 600 3e-3 84 28 96 3 > $D/tower-p28-600.log
python benchmarks/demo_probe/tower_pretrain_variants.py 600 3e-3 84 14 96 3 > $D/tower-p14-600.log
python benchmarks/demo_probe/tower_pretrain_variants.py 1600 3e-3 84 28 96 3 > $D/tower-p28-1600.log
# 2. whole recipes from scratch on 28-px patches: A = `bound` as it is; B = tower 3,000 steps and every
#    question phase 1.5x; E = A with an 8-layer LLM (hyper layers 1 and 6); F = A with a wider LLM (stopped
#    in its binding phase to free the CPU)
python $D/run.py /tmp/p28/A 1 1.0 > $D/recipe-A.log
python $D/run.py /tmp/p28/B 1 1.5 3000 > $D/recipe-B.log
python $D/run2.py /tmp/p28/E 1 1.0 1600 n_layers=8 hyper_layers=1/6 > $D/recipe-E.log
python $D/run2.py /tmp/p28/F 1 1.0 1600 dim=192 hidden_dim=768 n_heads=6 n_kv_heads=3 > $D/recipe-F-stopped.log
# 3. G = A plus the `weak` phase (A's finished phases copied in and skipped), now `owl3 demo-train OUT`
mkdir -p /tmp/p28/G
cp -r /tmp/p28/A/{init,phase-1-tower,phase-2-recency,phase-3-single,phase-4-binding,phase-5-gates,phase-6-all,demo_train.json} /tmp/p28/G/
python $D/run3.py /tmp/p28/G 1 1500 5e-4 > $D/recipe-G.log
# 4. one-image questions after the single phase (seed 1, 200 questions)
for r in A B; do
  owl3 eval synthetic --model /tmp/p28/$r/phase-3-single --seed 1 --images 1 --limit 200 --video-frames 0 \
    --which-images 0 --output $D/ev1-$r-single.jsonl
done
# 5. the binding probe after the binding phase (200 held-out "In Image X" questions among 2-8 images)
for r in A B; do
  python benchmarks/demo_probe/attention_supervision.py /tmp/p28/$r/phase-4-binding /tmp/p28/probe$r 0 1 "" 1 2-8 \
    official 1 3 | tail -1 > $D/probe-$r-binding.log
done
python benchmarks/demo_probe/attention_supervision.py /tmp/p28/E/phase-4-binding /tmp/p28/probeE 0 1 "" 1 2-8 \
  official 1 5 | tail -1 > $D/probe-E-binding.log
# 6. the evaluation (seed 0, 100 questions a row) and the paired comparison with `bound` (the model shipped
#    before this session); seed 2 (300 questions a row) for A and G
B0=docs/benchmarks/2026-11-27-demo-binding/eval-shipped-bound-limit100.jsonl
B2=docs/benchmarks/2026-11-27-demo-binding/eval-bound-s2-300.jsonl
for r in A B E G; do
  owl3 eval synthetic --model /tmp/p28/$r/model --seed 0 --images 1,5,8,20,50,100 --limit 100 \
    --output $D/ev-$r.jsonl > $D/ev-$r.txt
  (echo "\$ owl3 eval compare $B0 $D/ev-$r.jsonl"; owl3 eval compare $B0 $D/ev-$r.jsonl) > $D/compare-bound-vs-$r.txt
done
for r in A G; do
  owl3 eval synthetic --model /tmp/p28/$r/model --seed 2 --images 1,8 --limit 300 --output $D/ev-$r-s2-300.jsonl \
    > $D/ev-$r-s2-300.txt
  (echo "\$ owl3 eval compare $B2 $D/ev-$r-s2-300.jsonl"; owl3 eval compare $B2 $D/ev-$r-s2-300.jsonl) \
    > $D/compare-bound-vs-$r-seed2.txt
done
# 6b. the control C: the same weak phase on `bound` itself (14-px patches): the weights shipped before this
#     session (git 1cc91f3) put in place of phases 1-6 of a run folder, which train_demo then skips
mkdir -p /tmp/ctl && (cd /tmp/ctl && git -C "$OLDPWD" archive 1cc91f3 owl3/assets/demo | tar x)
for ph in init phase-1-tower phase-2-recency phase-3-single phase-4-binding phase-5-gates phase-6-all; do
  mkdir -p /tmp/ctl/$ph && cp /tmp/ctl/owl3/assets/demo/* /tmp/ctl/$ph/
done
python $D/run_ctl.py /tmp/ctl > $D/recipe-C.log
owl3 eval synthetic --model /tmp/ctl/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/ev-C.jsonl \
  > $D/ev-C.txt
owl3 eval synthetic --model /tmp/ctl/model --seed 2 --images 1,8 --limit 300 --output $D/ev-C-s2-300.jsonl \
  > $D/ev-C-s2-300.txt
(echo "\$ owl3 eval compare $B0 $D/ev-C.jsonl"; owl3 eval compare $B0 $D/ev-C.jsonl) > $D/compare-bound-vs-C.txt
(echo "\$ owl3 eval compare $B2 $D/ev-C-s2-300.jsonl"; owl3 eval compare $B2 $D/ev-C-s2-300.jsonl) \
  > $D/compare-bound-vs-C-seed2.txt
(echo "\$ owl3 eval compare $D/ev-G.jsonl $D/ev-C.jsonl"; owl3 eval compare $D/ev-G.jsonl $D/ev-C.jsonl) > $D/compare-G-vs-C.txt
(echo "\$ owl3 eval compare $D/ev-G-s2-300.jsonl $D/ev-C-s2-300.jsonl"; owl3 eval compare $D/ev-G-s2-300.jsonl \
  $D/ev-C-s2-300.jsonl) > $D/compare-G-vs-C-seed2.txt
# 7. G shipped (owl3/assets/demo): its evaluation, the plot, `owl3 demo`
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/eval-shipped-cells-limit100.jsonl \
  --json > $D/eval-shipped-cells-limit100.txt
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 40 --output $D/eval-shipped-cells-limit40.jsonl \
  --plot docs/demo-eval.png --json > $D/eval-shipped-cells-limit40.txt
owl3 demo > $D/owl3-demo-seed0.txt
# 8. the recipe through the real command (alone for its first three phases, then beside C): G's weights again?
#    (the log keeps the lines between the progress bars)
owl3 demo-train /tmp/repro 2>&1 | tr '\r' '\n' | grep -av '^train sft\|^\s*$' > $D/recipe-cells-from-scratch.log
cp /tmp/repro/demo_train.json $D/recipe-cells-from-scratch-demo_train.json
sha256sum /tmp/repro/model/model.safetensors owl3/assets/demo/model.safetensors > $D/recipe-cells-from-scratch-sha256.txt
