#!/usr/bin/env bash
# Every command behind docs/demo.md "A longer last phase (2026-12-03, twenty-second session)", run from the
# repository root with its venv active, on the 2-core AMD EPYC (family 26, Zen 5, with AVX-512; lscpu.txt)
# of the three sessions before. /tmp/c2 is C2 (`cells-copy-head`) of the twenty-first session
# (docs/benchmarks/2026-12-03-demo-copy/commands.sh step 5), every phase's model kept; /tmp/r is R.
set -euo pipefail
D=docs/benchmarks/2026-12-03-demo-counts
S=docs/benchmarks/2026-12-02-demo-scratch  # R's records
P=docs/benchmarks/2026-12-03-demo-copy     # C2's records and kinds.py

# score NAME MODEL: MODEL at seeds 2 and 3 (300 questions a row), compared with R's records
score() {
  for s in 2 3; do
    owl3 eval synthetic --model $2 --seed $s --images 1,8 --limit 300 \
      --output $D/ev-$1-s$s-300.jsonl > $D/ev-$1-s$s-300.txt
    (echo "\$ owl3 eval compare $S/ev-R-s$s-300.jsonl $D/ev-$1-s$s-300.jsonl"
     owl3 eval compare $S/ev-R-s$s-300.jsonl $D/ev-$1-s$s-300.jsonl) > $D/compare-R-vs-$1-seed$s.txt
  done
}

# 1. (RULE.md, committed before 2-3 were scored) two probes at once, one torch thread each: C2's last
#    phase again from its ninth model with twice the counts (C3) and twice the steps (C4p)
python benchmarks/demo_probe/phase_again.py /tmp/c2 /tmp/v2c copy-head-counts 1 &
python benchmarks/demo_probe/phase_again.py /tmp/c2 /tmp/v2l copy-head-long 1
wait
cp /tmp/v2c/demo_train.json $D/phase-again-C3-demo_train.json
cp /tmp/v2l/demo_train.json $D/phase-again-C4p-demo_train.json
# 2. scores (C3 was scored with OMP_NUM_THREADS=1 while C4p still trained: same answers, greedy decoding)
score C3 /tmp/v2c/model
score C4p /tmp/v2l/model
# 3. rule 4: C4's last phase trained again alone with two threads (what `owl3 demo-train` does); that
#    model is timed, scored and shipped (owl3/assets/demo/model.safetensors; sha256.txt)
/usr/bin/time -v python benchmarks/demo_probe/phase_again.py /tmp/c2 /tmp/c4 copy-head-long \
  > /tmp/c4.out 2> /tmp/c4.err
grep -v "^train sft: .*step/s" /tmp/c4.err | tr '\r' '\n' | sed '/^\s*$/d' > $D/recipe-C4-phase10.log
cp /tmp/c4/demo_train.json $D/recipe-C4-demo_train.json
score C4 /tmp/c4/model
sha256sum /tmp/c4/model/model.safetensors /tmp/v2l/model/model.safetensors /tmp/r/model/model.safetensors \
  > $D/sha256.txt
cp /tmp/c4/model/model.safetensors owl3/assets/demo/model.safetensors
# 4. per kind, R / C2 / C4 (kinds-R-C2-C4.txt)
(cd $D && for row in 1 8; do python ../2026-12-03-demo-copy/kinds.py $row \
  R-s2=../2026-12-02-demo-scratch/ev-R-s2-300.jsonl C2-s2=../2026-12-03-demo-copy/ev-C2-s2-300.jsonl \
  C4-s2=ev-C4-s2-300.jsonl R-s3=../2026-12-02-demo-scratch/ev-R-s3-300.jsonl \
  C2-s3=../2026-12-03-demo-copy/ev-C2-s3-300.jsonl C4-s3=ev-C4-s3-300.jsonl; done) > $D/kinds-R-C2-C4.txt
# 5. the shipped model's curve at seed 0 (README, docs/demo-eval.png) and `owl3 demo`, against R's
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/eval-shipped-seed0-limit100.jsonl \
  --plot $D/eval-shipped-seed0-limit100.png --json > $D/eval-shipped-seed0-limit100.txt
cp $D/eval-shipped-seed0-limit100.png docs/demo-eval.png
(echo "\$ owl3 eval compare $S/eval-shipped-R-limit100.jsonl $D/eval-shipped-seed0-limit100.jsonl"
 owl3 eval compare $S/eval-shipped-R-limit100.jsonl $D/eval-shipped-seed0-limit100.jsonl) > $D/compare-R-vs-C4-seed0.txt
owl3 demo --output /tmp/demo0 > $D/owl3-demo-shipped-seed0.txt
for s in 1 2 3; do owl3 demo --seed $s --output /tmp/demo$s > $D/owl3-demo-shipped-seed$s.txt; done
# 6. the new default from scratch in one command, alone on the CPU: its time, and whether it writes the
#    shipped bytes (scratch-sha256.txt)
/usr/bin/time -v owl3 demo-train /tmp/s > /tmp/slog/out.txt 2> /tmp/slog/err.txt
tr '\r' '\n' < /tmp/slog/err.txt | grep -v "^train sft: .*step/s" | sed '/^\s*$/d' > $D/recipe-scratch.log
cp /tmp/s/demo_train.json $D/recipe-scratch-demo_train.json
sha256sum /tmp/s/model/model.safetensors owl3/assets/demo/model.safetensors > $D/scratch-sha256.txt
# 7. (RULE.md, second rule, committed before these were trained) CW and CL: C4's last phase again from its
#    ninth model, with "which image?" targets (CW) and lists of 2-24 images (CL), the two at once with one
#    torch thread each; C4 and R scored with the 20-image row too (rows 1 and 8 are the same questions and
#    answers as step 3's, checked)
python benchmarks/demo_probe/phase_again.py /tmp/c4 /tmp/cw copy-long-which 1 &
python benchmarks/demo_probe/phase_again.py /tmp/c4 /tmp/cl copy-long-lists 1
wait
for s in 2 3; do
  owl3 eval synthetic --seed $s --images 1,8,20 --limit 300 --output $D/ev-C4-s$s-1-8-20.jsonl > $D/ev-C4-s$s-1-8-20.txt
  owl3 eval synthetic --model /tmp/r/model --seed $s --images 20 --limit 300 --video-frames 0 --which-images 0 \
    --output $D/ev-R-s$s-20.jsonl > $D/ev-R-s$s-20.txt
  (echo "\$ owl3 eval compare $D/ev-R-s$s-20.jsonl $D/ev-C4-s$s-1-8-20.jsonl"
   owl3 eval compare $D/ev-R-s$s-20.jsonl $D/ev-C4-s$s-1-8-20.jsonl) > $D/compare-R-vs-C4-20images-seed$s.txt
  for t in CW CL; do
    owl3 eval synthetic --model /tmp/${t,,}/model --seed $s --images 1,8,20 --limit 300 \
      --output $D/ev-$t-s$s-1-8-20.jsonl > $D/ev-$t-s$s-1-8-20.txt
    (echo "\$ owl3 eval compare $D/ev-C4-s$s-1-8-20.jsonl $D/ev-$t-s$s-1-8-20.jsonl"
     owl3 eval compare $D/ev-C4-s$s-1-8-20.jsonl $D/ev-$t-s$s-1-8-20.jsonl) > $D/compare-C4-vs-$t-seed$s.txt
  done
done
cp /tmp/cw/demo_train.json $D/phase-again-CW-demo_train.json
cp /tmp/cl/demo_train.json $D/phase-again-CL-demo_train.json
# 8. rule 4 for CL: its last phase again alone with two threads (CL2), scored against C4, shipped
/usr/bin/time -v python benchmarks/demo_probe/phase_again.py /tmp/c4 /tmp/cl2 copy-long-lists > /tmp/cl2.out 2> /tmp/cl2.err
grep -v "^train sft: .*step/s" /tmp/cl2.err | tr '\r' '\n' | sed '/^\s*$/d' > $D/recipe-CL2-phase10.log  # (time -v's zero lines dropped)
cp /tmp/cl2/demo_train.json $D/recipe-CL2-demo_train.json
for s in 2 3; do
  owl3 eval synthetic --model /tmp/cl2/model --seed $s --images 1,8,20 --limit 300 \
    --output $D/ev-CL2-s$s-1-8-20.jsonl > $D/ev-CL2-s$s-1-8-20.txt
  (echo "\$ owl3 eval compare $D/ev-C4-s$s-1-8-20.jsonl $D/ev-CL2-s$s-1-8-20.jsonl"
   owl3 eval compare $D/ev-C4-s$s-1-8-20.jsonl $D/ev-CL2-s$s-1-8-20.jsonl) > $D/compare-C4-vs-CL2-seed$s.txt
done
sha256sum /tmp/cl2/model/model.safetensors /tmp/cl/model/model.safetensors /tmp/cw/model/model.safetensors > $D/sha256-CL.txt
cp /tmp/cl2/model/model.safetensors owl3/assets/demo/model.safetensors
# 9. the shipped model's curve at seed 0 (README, docs/demo-eval.png) and `owl3 demo` at seeds 0-3
owl3 eval synthetic --seed 0 --images 1,5,8,20,50,100 --limit 100 --output $D/eval-shipped-CL2-seed0-limit100.jsonl \
  --plot $D/eval-shipped-CL2-seed0-limit100.png --json > $D/eval-shipped-CL2-seed0-limit100.txt
cp $D/eval-shipped-CL2-seed0-limit100.png docs/demo-eval.png
(echo "\$ owl3 eval compare $D/eval-shipped-seed0-limit100.jsonl $D/eval-shipped-CL2-seed0-limit100.jsonl"
 owl3 eval compare $D/eval-shipped-seed0-limit100.jsonl $D/eval-shipped-CL2-seed0-limit100.jsonl) > $D/compare-C4-vs-CL2-seed0.txt
for s in 0 1 2 3; do owl3 demo --seed $s --output /tmp/dd$s > $D/owl3-demo-CL2-seed$s.txt; done
