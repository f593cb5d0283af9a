#!/usr/bin/env bash
# Every command behind docs/demo.md "Faster steps (2026-12-02, eighteenth session)", run from the
# repository root with its venv active, on a 2-core AMD EPYC (Zen 3: AVX2, no AVX-512), alone on the CPU.
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-split
G=docs/benchmarks/2026-12-02-demo-two
# 0. the previous shipped model (cells-more-video, V2) = phase 9 of cells-two
mkdir -p /tmp/v2
for f in $(git ls-tree --name-only 7aecdfc owl3/assets/demo/); do git show 7aecdfc:$f > /tmp/v2/$(basename $f); done
# 1. S2: phase 10 trained again with this code (batched attention losses, batches in 2 pieces by length);
#    the shipped G is the same phase trained with the code of 6e06137 (G's record: $G/recipe-G-demo_train.json)
python $D/run_split.py /tmp/s2 /tmp/v2 2 > /tmp/s2.out 2> $D/recipe-S2.log
cp /tmp/s2/demo_train.json $D/recipe-S2-demo_train.json
sha256sum /tmp/s2/model/model.safetensors owl3/assets/demo/model.safetensors | sed 's#/tmp/s2#OUT#' > $D/recipe-S2-sha256.txt
# 2. S2 against G on the same questions
for s in 2 3; do
  owl3 eval synthetic --model /tmp/s2/model --seed $s --images 1,8 --limit 300 --output $D/ev-S2-s$s-300.jsonl \
    > $D/ev-S2-s$s-300.txt
  (echo "\$ owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-S2-s$s-300.jsonl"
   owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-S2-s$s-300.jsonl) > $D/compare-G-vs-S2-seed$s.txt
done
# 3. seconds a step, side by side: the code before this session (6e06137, a worktree; the benchmark script
#    copied in as it was at the time, without the padding column) and this session's, splits 1 and 4,
#    alternating (train_step-before-after.txt: old, new, old, new); then this commit's script, splits 1,2,4
git worktree add /tmp/old 6e06137
cp benchmarks/train_step.py /tmp/old/benchmarks/   # (the version of commit 1bbeba6)
for r in 0 1; do
  PYTHONPATH=/tmp/old python /tmp/old/benchmarks/train_step.py /tmp/tb/old$r --rounds 1 | tail -3
  python benchmarks/train_step.py /tmp/tb/new$r --rounds 1 | tail -4
done > $D/train_step-before-after.txt
python benchmarks/train_step.py /tmp/tb/rec --splits 1,2,4 --rounds 2 > $D/train_step.txt
# 4. E1 (RULE.md "E1"): G, then a phase with a fifth of its question kinds `describe`; scored against G
python $D/run_describe.py /tmp/g /tmp/e1 > /tmp/e1.out 2> $D/recipe-E1.log   # /tmp/g: run_two.py's G folder
cp /tmp/e1/demo_train.json $D/recipe-E1-demo_train.json
for s in 2 3; do
  owl3 eval synthetic --model /tmp/e1/model --seed $s --images 1,8 --limit 300 --output $D/ev-E1-s$s-300.jsonl \
    > $D/ev-E1-s$s-300.txt
  (echo "\$ owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-E1-s$s-300.jsonl"
   owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-E1-s$s-300.jsonl) > $D/compare-G-vs-E1-seed$s.txt
done
python $D/describe_probe.py /tmp/e1/model 100 1 2 8 > $D/describe-probe-E1.txt
# 5. E2 (RULE.md "E2"): G, then a phase with every list row's labels after the images; asked in that layout
python $D/run_label_after.py /tmp/g /tmp/e2 > /tmp/e2.out 2> $D/recipe-E2.log
cp /tmp/e2/demo_train.json $D/recipe-E2-demo_train.json
for s in 2 3; do
  owl3 eval synthetic --model /tmp/e2/model --seed $s --images 1,8 --limit 300 --output $D/ev-E2-s$s-300.jsonl \
    > $D/ev-E2-s$s-300.txt
  (echo "\$ owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-E2-s$s-300.jsonl"
   owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-E2-s$s-300.jsonl) > $D/compare-G-vs-E2-seed$s.txt
done
# 6. where G's 8-image answers fail: other possible answers in the list, and the position of image X
python $D/ambiguity.py $G/ev-G-s2-300.jsonl 2 $G/ev-G-s3-300.jsonl 3 > $D/ambiguity-G.txt
# 7. C (RULE.md "C", the control): G, then the `two` phase once more; scored against G
python $D/run_again.py /tmp/g /tmp/c > /tmp/c.out 2> $D/recipe-C.log
cp /tmp/c/demo_train.json $D/recipe-C-demo_train.json
for s in 2 3; do
  owl3 eval synthetic --model /tmp/c/model --seed $s --images 1,8 --limit 300 --output $D/ev-C-s$s-300.jsonl \
    > $D/ev-C-s$s-300.txt
  (echo "\$ owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-C-s$s-300.jsonl"
   owl3 eval compare $G/ev-G-s$s-300.jsonl $D/ev-C-s$s-300.jsonl) > $D/compare-G-vs-C-seed$s.txt
done
for e in E1 E2; do for s in 2 3; do
  (echo "\$ owl3 eval compare $D/ev-C-s$s-300.jsonl $D/ev-$e-s$s-300.jsonl"
   owl3 eval compare $D/ev-C-s$s-300.jsonl $D/ev-$e-s$s-300.jsonl) > $D/compare-C-vs-$e-seed$s.txt
done; done
# 8. E3 (RULE.md "E3"): G, then hard lists (every distractor shows the asked shape, half the rows lists)
python $D/run_hard.py /tmp/g /tmp/e3 > /tmp/e3.out 2> $D/recipe-E3.log
cp /tmp/e3/demo_train.json $D/recipe-E3-demo_train.json
for s in 2 3; do
  owl3 eval synthetic --model /tmp/e3/model --seed $s --images 1,8 --limit 300 --output $D/ev-E3-s$s-300.jsonl \
    > $D/ev-E3-s$s-300.txt
  for a in $G/ev-G $D/ev-C; do
    b=$(basename $a | sed 's/ev-//')
    (echo "\$ owl3 eval compare $a-s$s-300.jsonl $D/ev-E3-s$s-300.jsonl"
     owl3 eval compare $a-s$s-300.jsonl $D/ev-E3-s$s-300.jsonl) > $D/compare-$b-vs-E3-seed$s.txt
  done
done
# 9. the attention targets of phase 10's rows (G's data folder): 19,200 rows, 99,516 targets
python3 -c "import json; rows = [json.loads(l) for l in open('/tmp/g/data/two/two.jsonl')]; print(len(rows), sum(len(r.get('attend', [])) for r in rows))"
# 10. after the review's change to the losses' gather (no per-target copy of the keys): the code before it
#     (47602c3, a worktree) and after, side by side in one run
git worktree add /tmp/pre 47602c3
(PYTHONPATH=/tmp/pre python /tmp/pre/benchmarks/train_step.py /tmp/tb/pre --splits 1,2 --rounds 1 | tail -3
 python benchmarks/train_step.py /tmp/tb/post --splits 1,2,4 --rounds 1 | tail -4) > $D/train_step-review.txt
