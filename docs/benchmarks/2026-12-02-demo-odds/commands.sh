#!/usr/bin/env bash
# Every command behind docs/demo.md "A look that can count, and another CPU (2026-12-02, sixteenth session)",
# run from the repository root with its venv active, on a 2-core AMD EPYC (Zen 3: AVX2, no AVX-512;
# torch.backends.cpu.get_cpu_capability() = AVX2). Two torch threads, one loader process per training run.
set -euo pipefail
D=docs/benchmarks/2026-12-02-demo-odds
T=docs/benchmarks/2026-12-02-demo-threads
C=docs/benchmarks/2026-12-02-demo-count
# 0. the default recipe from scratch on this CPU, stopped in its binding phase (step 103 of 1,000) to give
#    the CPU to the probes below; its tower, single and binding lines against the fifteenth session's run
#    on the AVX-512 Xeon (T/recipe-R2.log, T/recipe-R2-demo_train.json)
owl3 demo-train /tmp/base 2> /tmp/base.err || true
tr '\r' '\n' < /tmp/base.err | grep -av '^\s*$' | grep -av '^train sft:' > $D/recipe-amd-first-phases.log
cp /tmp/base/phase-3-single/metrics.jsonl $D/recipe-amd-single-metrics.jsonl  # the single phase's steps
# 1. seconds per step of the binding phase's rows on this CPU, in owl3's own training loop, 60 steps from the
#    single phase's model (metrics.jsonl step_s, first 5 dropped): default; OMP_WAIT_POLICY=PASSIVE;
#    PASSIVE without the loader process. And a profile of three steps (no loader).
python $D/loop.py /tmp/base/phase-3-single /tmp/base/data/binding/binding.jsonl 2 1 60 /tmp/prof/o-def-w1
OMP_WAIT_POLICY=PASSIVE python $D/loop.py /tmp/base/phase-3-single /tmp/base/data/binding/binding.jsonl 2 1 60 /tmp/prof/o-pas-w1
OMP_WAIT_POLICY=PASSIVE python $D/loop.py /tmp/base/phase-3-single /tmp/base/data/binding/binding.jsonl 2 0 60 /tmp/prof/o-pas-w0
python $D/steps.py /tmp/prof/o-def-w1 /tmp/prof/o-pas-w1 /tmp/prof/o-pas-w0 > $D/step-times-amd.txt
(cd $D && PYTHONPATH=../2026-11-28-demo-cells python prof.py /tmp/base/phase-3-single /tmp/base/data/binding/binding.jsonl 2 \
   2>&1 | grep -v '^USDT\|^owl3 train') > $D/prof-amd.txt
# 2. the shipped model evaluated on this CPU: the same answers as on the Xeon, question for question
for s in 2 3; do
  owl3 eval synthetic --seed $s --images 1,8 --limit 300 --output /tmp/ev/shipped-s$s.jsonl
  (echo "\$ owl3 eval compare $T/ev-V2-s$s-300.jsonl EPYC/shipped-s$s.jsonl  # the shipped model evaluated on this CPU"
   owl3 eval compare $T/ev-V2-s$s-300.jsonl /tmp/ev/shipped-s$s.jsonl) > $D/compare-Xeon-vs-EPYC-shipped-seed$s.txt
done
# 2b. the shipped model's count misses at seeds 2 and 3 (true count -> said count, by row)
python $D/count_misses.py $T/ev-V2-s2-300.jsonl $T/ev-V2-s3-300.jsonl > $D/count-misses-shipped-s2-s3.txt
# 3. probes: one extra phase after the shipped model (probe_odds.py), A-C mixed rows at lr 2e-4 (300 steps),
#    D-E one-image rows at the count phase's lr (600 steps), F mixed rows at the count phase's lr (600 steps;
#    a first F was stopped at step ~150 and run again from the start, beside the test suite)
python $D/probe_odds.py /tmp/oA 0
python $D/probe_odds.py /tmp/oB 4
python $D/probe_odds.py /tmp/oC 4 300 balance
python $D/probe_odds.py /tmp/oD 4 600 balance single
python $D/probe_odds.py /tmp/oE 0 600 balance single
python $D/probe_odds.py /tmp/oF 4 600 balance recipe-lr
python $C/count_probe.py owl3/assets/demo 600 > $D/probe-shipped.log
for m in A B C D E F; do
  python $C/count_probe.py /tmp/o$m/model 600 > $D/probe-$m.log
  cp /tmp/o$m/demo_train.json $D/probe-$m-demo_train.json
  owl3 eval synthetic --model /tmp/o$m/model --seed 2 --images 1,8 --limit 300 --output $D/ev-$m-s2-300.jsonl \
    > $D/ev-$m-s2-300.txt
done
for m in D E F; do
  owl3 eval synthetic --model /tmp/o$m/model --seed 3 --images 1,8 --limit 300 --output $D/ev-$m-s3-300.jsonl \
    > $D/ev-$m-s3-300.txt
done
for pair in V2:A:2 V2:B:2 V2:C:2 V2:D:2 V2:E:2 V2:F:2 V2:D:3 V2:E:3 V2:F:3 E:D:2 E:D:3; do
  IFS=: read -r a b s <<< "$pair"; ad=$D; [ "$a" = V2 ] && ad=$T
  (echo "\$ owl3 eval compare $ad/ev-$a-s$s-300.jsonl $D/ev-$b-s$s-300.jsonl"
   owl3 eval compare $ad/ev-$a-s$s-300.jsonl $D/ev-$b-s$s-300.jsonl) > $D/compare-$a-vs-$b-seed$s.txt
done
