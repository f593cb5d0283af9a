#!/bin/bash
# ev.sh MODEL NAME OUTDIR: the one-image proxy (seed 1, 300 questions) and the standard evaluation (seed 0,
# 100 questions per row) of docs/demo.md, records and tables under OUTDIR
M=$1; N=$2; O=$3
owl3 eval synthetic --model $M --seed 1 --images 1 --limit 300 --video-frames 0 --which-images 0 \
    --output $O/ev1-$N.jsonl --plot $O/ev1-$N.png > $O/ev1-$N.txt 2>&1
owl3 eval synthetic --model $M --seed 0 --images 1,5,8,20,50,100 --limit 100 \
    --output $O/eval-$N.jsonl --plot $O/eval-$N.png > $O/eval-$N.txt 2>&1
