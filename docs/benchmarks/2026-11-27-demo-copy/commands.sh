# Tenth session (2026-11-27): where the answer loses image X's colour, and the recipe `after`.
# Run from this folder with owl3's venv; /tmp/q/W is the ninth session's W run
# (docs/benchmarks/2026-11-27-demo-question-first/commands.sh), /tmp/c holds this session's models.
P=../../../benchmarks/demo_probe/attention_supervision.py

# 1. W's final model: what the answer's position holds after each layer, and which tokens after image X
#    hold the colour and which the answer reads
python copy_probe.py /tmp/q/W/model question_twice 800            # copy-W.log
python after_probe.py /tmp/q/W/model question_twice 5 800          # after-W.log

# 2. 100-step probes from W's final model (colour, shape, size, position questions among 2-8 images,
#    question_twice, the tower frozen, lr 1e-3; arguments: STEPS WEIGHT KINDS OPROJ IMAGES STYLE
#    SELF_WEIGHT SELF_LAYER COPY_WEIGHT SELF_TOKENS AFTER_WEIGHT). One torch thread each, two at a time.
python $P /tmp/q/W/model /tmp/c/C0 100 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 0        # C0.log
python $P /tmp/q/W/model /tmp/c/C1 100 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 1.0      # C1.log
python $P /tmp/q/W/model /tmp/c/D1 100 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 0 1      # D1.log
python $P /tmp/q/W/model /tmp/c/D2 100 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 1.0 1    # D2.log
python $P /tmp/q/W/model /tmp/c/E0 100 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 0 4 1.0  # E0.log
python $P /tmp/q/W/model /tmp/c/E1 100 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 0 1 1.0  # E1.log
python $P /tmp/q/W/model /tmp/c/E2 100 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 1.0 1 1.0  # E2.log
python $P /tmp/q/W/model /tmp/c/E3 300 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 0 1 1.0  # E3.log
python $P /tmp/q/W/model /tmp/c/E4 300 0 colour,shape,size,position 1 2-8 question_twice 1.0 5 0 4 1.0  # E4.log
for r in C0 C1 E1 E2 E3 E4; do python copy_probe.py /tmp/c/$r question_twice 800; done       # copy-*.log
python copy_probe.py /tmp/c/D1 question_twice 400                                               # copy-D1.log
python after_probe.py /tmp/c/E1 question_twice 5 800                                            # after-E1.log
for r in C1 D1; do python after_probe.py /tmp/c/$r question_twice 5 400; done                   # after-*.log
# E3 trained on four kinds only, so it forgets the rest (a probe, not a model):
owl3 eval synthetic --model /tmp/c/E3 --seed 0 --images 1,5,8,20 --limit 100 --layout question_twice --output ev-E3.jsonl  # ev-E3.txt

# 3. The recipes, resumed from W's first four phases (identical to `after`'s: tower, recency, single,
#    recency-2), one torch thread each, A and B at the same time
python run.py A /tmp/c/A 1     # recipe `after`                          recipe-A.log
python run.py B /tmp/c/B 1     # `after` with the answer's own look kept  recipe-B.log
# control: the shipped `bound` model, official layout, its own text-target layer (3), no after-image look
python $P ../../../owl3/assets/demo /tmp/c/E5 300 0 colour,shape,size,position 1 2-8 official 1.0 3 0 4 0   # E5.log
python copy_probe.py ../../../owl3/assets/demo official 800; python copy_probe.py /tmp/c/E5 official 800   # copy-bound.log, copy-E5.log
python after_probe.py /tmp/c/E4 question_twice 5 800   # after-E4.log

# 4. After A's and B's binding phases (the runs were stopped there)
python $P /tmp/c/A/phase-5-binding /tmp/c/pA 0 1.0 "" 1 2-8 question_twice 1.0 5 0 1   # probe-A-binding.log
python $P /tmp/c/B/phase-5-binding /tmp/c/pB 0 1.0 "" 1 2-8 question_twice 1.0 5 0 1   # probe-B-binding.log
for r in A B W; do python copy_probe.py /tmp/c/$r/phase-5-binding question_twice 800; done   # copy-*-binding.log (W: /tmp/q/W)

# 5. F1 and F2: W's last phase without the answer's own look (F2: more "In Image X" rows), from W's gates
#    step, one torch thread each, at the same time; then evaluated and compared question by question
python run.py F1 /tmp/c/F1 1    # recipe-F1.log
python run.py F2 /tmp/c/F2 1    # recipe-F2.log
for r in F1 F2; do
  owl3 eval synthetic --model /tmp/c/$r/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --layout question_twice --output ev-$r.jsonl   # ev-$r.txt
  owl3 eval compare ../2026-11-27-demo-binding/eval-shipped-bound-limit100.jsonl ev-$r.jsonl       # compare-bound-vs-$r.txt
  owl3 eval compare ../2026-11-27-demo-question-first/ev-W.jsonl ev-$r.jsonl                        # compare-W-vs-$r.txt
  python copy_probe.py /tmp/c/$r/model question_twice 800                                           # copy-$r.log
done

# 6. G and H: W's final model, then 300 steps of "In Image X" rows alone (G: every kind; H: colour, shape,
#    size, place) and 150 steps of W's last mix against forgetting; OUT holds W's seven phase folders
python focus.py G /tmp/c/G 1    # recipe-G.log
python focus.py H /tmp/c/H 1    # recipe-H.log
for r in G H; do
  python copy_probe.py /tmp/c/$r/phase-8-focus question_twice 800      # copy-$r-focus.log
  owl3 eval synthetic --model /tmp/c/$r/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --layout question_twice --output ev-$r.jsonl   # ev-$r.txt
  owl3 eval compare ../2026-11-27-demo-binding/eval-shipped-bound-limit100.jsonl ev-$r.jsonl       # compare-bound-vs-$r.txt
done
python copy_probe.py /tmp/c/H/model question_twice 800               # copy-H.log
# I: H with a fifth of the focus rows "which image?" questions
python focus.py I /tmp/c/I 1    # recipe-I.log
owl3 eval synthetic --model /tmp/c/I/model --seed 0 --images 1,5,8,20,50,100 --limit 100 --layout question_twice --output ev-I.jsonl   # ev-I.txt
owl3 eval compare ../2026-11-27-demo-binding/eval-shipped-bound-limit100.jsonl ev-I.jsonl        # compare-bound-vs-I.txt
python copy_probe.py /tmp/c/I/model question_twice 800               # copy-I.log
