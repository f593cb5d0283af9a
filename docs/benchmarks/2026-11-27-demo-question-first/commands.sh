# The commands behind every figure of docs/demo.md "The question before the images" (ninth session).
# Each run resumed from the sixth session's from-scratch `bound` run (/tmp/e2/S: its phases 1-3, which
# `owl3 demo-train OUT` reproduces bit for bit), one torch thread, one loader process, two runs at a time.
python run.py Q  /tmp/q/Q     # recipe `first`                           -> recipe-Q.log, recipe-Q-demo_train.json
python run.py Q0 /tmp/q/Q0    # question first only (no recency heads in hyper layer 2, text targets at layer 3)
python run.py R  /tmp/q/R     # `first` + the after-image look (Mix.bind_after)
python run.py W  /tmp/q/W     # R with the question before and after the list
python -c "from owl3.demo.train import TWICE_PHASES, train_demo; train_demo('/tmp/q/V', phases=TWICE_PHASES)"  # recipe `twice`

# binding probe after the binding phase (200 held-out "In Image X" questions, 2-8 images; probe-*.log)
python benchmarks/demo_probe/attention_supervision.py /tmp/q/Q0/phase-4-binding OUT 0 1.0 "" 1 2-8 question_first 1.0 3
python benchmarks/demo_probe/attention_supervision.py /tmp/q/Q/phase-5-binding OUT 0 1.0 "" 1 2-8 question_first 1.0 5
python benchmarks/demo_probe/attention_supervision.py /tmp/q/R/phase-5-binding OUT 0 1.0 "" 1 2-8 question_first 1.0 5
python benchmarks/demo_probe/attention_supervision.py /tmp/q/W/phase-5-binding OUT 0 1.0 "" 1 2-8 question_twice 1.0 5
python benchmarks/demo_probe/attention_supervision.py /tmp/q/V/phase-5-binding OUT 0 1.0 "" 1 2-8 question_twice 1.0 5

# where the token right after image X looks (postx.log)
python postx.py MODEL question_first 100

# evaluation (ev-*.txt / .jsonl / .png) and paired comparison with the shipped model (compare-*.txt)
owl3 eval synthetic --model /tmp/q/M/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --layout LAYOUT --output ev-M.jsonl
owl3 eval synthetic --model /tmp/q/Q/model --seed 2 --images 1,8 --limit 300 --layout question_first --output ev-Q-s2-300.jsonl
owl3 eval compare ../2026-11-27-demo-binding/eval-shipped-bound-limit100.jsonl ev-M.jsonl
owl3 eval compare ../2026-11-27-demo-binding/eval-bound-s2-300.jsonl ev-Q-s2-300.jsonl

# the binding probe on W's final model (probe-W-final.log)
python benchmarks/demo_probe/attention_supervision.py /tmp/q/W/model OUT 0 1.0 "" 1 2-8 question_twice 1.0 5
# the asked colour read linearly from the token right after image X, after each layer (readout.log)
python readout.py /tmp/q/R/model question_first 800   # likewise Q (question_first), W and V (question_twice)

# W1: W's last phase again from W's gates step, the text target on the one token after image X
# (bind_tokens 1), two torch threads on an otherwise idle machine
python run.py W1 /tmp/q/W1 2
owl3 eval synthetic --model /tmp/q/W1/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --layout question_twice --output ev-W1.jsonl
