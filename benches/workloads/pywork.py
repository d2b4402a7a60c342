"""Python workload for the allocator benchmark (run with PYTHONMALLOC=malloc so
every object goes through the C malloc).  Builds and discards dicts, lists,
tuples, strings and small class instances, round-trips JSON, sorts, and
checks every result; exits 1 on any mismatch.

usage: python3 pywork.py SCALE
"""

import json
import random
import sys


class Node:
    __slots__ = ("key", "left", "right", "payload")

    def __init__(self, key, payload):
        self.key = key
        self.left = None
        self.right = None
        self.payload = payload


def insert(root, node):
    cur = root
    while True:
        if node.key < cur.key:
            if cur.left is None:
                cur.left = node
                return
            cur = cur.left
        else:
            if cur.right is None:
                cur.right = node
                return
            cur = cur.right


def inorder(root):
    out, stack, cur = [], [], root
    while stack or cur is not None:
        while cur is not None:
            stack.append(cur)
            cur = cur.left
        cur = stack.pop()
        out.append(cur.key)
        cur = cur.right
    return out


def fail(what):
    print("VERIFY-FAIL pywork: " + what, file=sys.stderr)
    sys.exit(1)


def main():
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rng = random.Random(12345)

    # 1. dict of records, JSON round trip
    records = {}
    for i in range(scale):
        records["k%d" % i] = {
            "id": i,
            "name": "name-%d-%s" % (i, "x" * (i % 37)),
            "tags": ["t%d" % (i % 7), "u%d" % (i % 11)],
            "score": (i * 7919) % 1000 / 10.0,
        }
    text = json.dumps(records)
    back = json.loads(text)
    if back != records:
        fail("json round trip")
    if sum(r["id"] for r in back.values()) != scale * (scale - 1) // 2:
        fail("sum of ids")
    del back, text

    # 2. churn of short-lived strings and tuples in a working set
    slots = [None] * 4096
    for i in range(scale * 10):
        j = rng.randrange(4096)
        old = slots[j]
        if old is not None and old[1] != "v" + str(old[0]) * (old[0] % 5 + 1):
            fail("string slot %d" % j)
        n = rng.randrange(1000)
        slots[j] = (n, "v" + str(n) * (n % 5 + 1), [n] * (n % 8))

    # 3. binary search tree of objects
    keys = [rng.random() for _ in range(scale)]
    root = Node(keys[0], None)
    for k in keys[1:]:
        insert(root, Node(k, [k] * 3))
    if inorder(root) != sorted(keys):
        fail("tree order")
    del root

    # 4. sorting and grouping strings
    words = ["%x" % rng.getrandbits(48) for _ in range(scale * 2)]
    groups = {}
    for w in words:
        groups.setdefault(w[:2], []).append(w)
    total = 0
    for g in groups.values():
        g.sort()
        total += len(g)
        for a, b in zip(g, g[1:]):
            if a > b:
                fail("group order")
    if total != len(words):
        fail("group count")
    joined = ",".join(sorted(words))
    if len(joined.split(",")) != len(words):
        fail("join/split")
    print("pywork ok", scale)


if __name__ == "__main__":
    main()
