# Workload for tests/preload.rs: run once with LD_PRELOAD=libbrkmalloc.so and
# once without (both with PYTHONMALLOC=malloc, so every object goes through
# malloc); the printed digest must be identical.
import hashlib
import json
import subprocess
import sys
import threading

THREADS = 16
results = [None] * THREADS


def work(tid):
    h = hashlib.sha256()
    d = {}
    lst = []
    for i in range(6000):
        key = "k%d-%d" % (tid, i % 1500)
        s = ("x" * (i % 97)) + str(i * tid) + key
        d[key] = [s, i, {"n": i, "t": tid, "f": i / 7.0}]
        lst.append(s.upper())
        if i % 5 == 0:
            del d[key]
        if len(lst) > 500:
            lst = lst[250:]
            h.update("".join(lst).encode())
    blob = json.dumps(d, sort_keys=True)
    back = json.loads(blob)
    assert back == json.loads(json.dumps(back, sort_keys=True))
    h.update(blob.encode())
    h.update(repr(sorted(back.items())[:50]).encode())
    results[tid] = h.hexdigest()


threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()

child = subprocess.run(
    [sys.executable, "-c", "import json,sys; d=json.load(sys.stdin); print(sum(d['v']), len(d['s']))"],
    input=json.dumps({"v": list(range(100000)), "s": "y" * 123456}),
    capture_output=True,
    text=True,
    check=True,
)

big = {str(i): [i, str(i) * 3, {"k": [i] * 5}] for i in range(50000)}
rt = json.loads(json.dumps(big))
assert rt == big

for tid, r in enumerate(results):
    print(tid, r)
print("child:", child.stdout.strip())
print("roundtrip:", hashlib.sha256(json.dumps(rt, sort_keys=True).encode()).hexdigest())
