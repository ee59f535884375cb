import json, sys, glob, os
# Usage: python3 shards_record.py RUN_DIR... (the --out directories of bench/time_to_accuracy.sh)
# Downpour final records: staleness histogram summary, bytes per replica, server updates.
for d in sys.argv[1:]:
    for run in sorted(glob.glob(d + '/*/metrics.jsonl')):
        fin = None
        for line in open(run):
            j = json.loads(line)
            if j.get('kind') == 'final': fin = j
        if not fin or 'staleness_histogram' not in fin: continue
        h = fin['staleness_histogram']; n = sum(h)
        cum = 0; p50 = p90 = None
        for k, c in enumerate(h):
            cum += c
            if p50 is None and cum >= n / 2: p50 = k
            if p90 is None and cum >= 0.9 * n: p90 = k
        last = len(h) - 1
        fmt = lambda k: (f'>={k}' if k == 63 else str(k))
        print(f"{os.path.basename(d):18s} {os.path.basename(os.path.dirname(run)):22s} updates {fin['server_updates']:6d}  staleness 0: {h[0]/n*100:5.1f}%  <=3: {sum(h[:4])/n*100:5.1f}%  median {fmt(p50)}  p90 {fmt(p90)}  max {fin['max_staleness']}  MB sent/replica0 {fin['bytes_sent']/1e6:8.1f}  MB recv {fin['bytes_recv']/1e6:8.1f}  rows pushed {fin.get('rows_pushed',0)} pulled {fin.get('rows_pulled',0)}  steps {fin['steps']}")
