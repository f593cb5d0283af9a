import json,sys
for d in sys.argv[1:]:
    r=[json.loads(l) for l in open(d+"/metrics.jsonl")]
    r=[x for x in r if "step_s" in x][5:]
    print(d, f"{sum(x['step_s'] for x in r)/len(r):.3f} s/step over {len(r)} steps")
