#!/usr/bin/env python3
"""Data checker for ci/soak.sh: keeps KEYS string keys in a redis server busy for SECONDS
(SET, GET, APPEND, DEL, in pipelined batches, values of mixed sizes from 8 B to 1 MiB derived
from the key and its version), checks every GET against its own model, and at the end reads
every key back. Exit 0 when every value matched, 3 on a wrong value, 5 on a protocol or
connection error. Standard library only (a raw RESP client).

usage: soak_redis.py PORT SECONDS [KEYS]
"""

import hashlib
import random
import socket
import sys
import time


class Resp:
    """A minimal blocking RESP2 client."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buf = b""

    def send(self, cmds):
        out = []
        for args in cmds:
            out.append(b"*%d\r\n" % len(args))
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                return line
            self._fill()

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise ConnectionError("server error: %r" % rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        raise ConnectionError("unexpected reply %r" % line)


def value(key, version, size):
    """The value of `key` at `version`: a header, then a digest-derived pattern."""
    head = b"%d:%d:" % (key, version)
    seed = hashlib.blake2b(head, digest_size=64).digest()
    reps = size // len(seed) + 1
    return (head + seed * reps)[:size] if size > len(head) else head[:size]


def skewed_size(rng):
    r = rng.random()
    if r < 0.70:
        return rng.randint(8, 512)
    if r < 0.95:
        return rng.randint(513, 16384)
    if r < 0.995:
        return rng.randint(16385, 131072)
    return rng.randint(131073, 1 << 20)


def main():
    port = int(sys.argv[1])
    seconds = float(sys.argv[2])
    nkeys = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    rng = random.Random(14)
    model = {}  # key -> expected bytes (absent: the key must not exist)
    version = [0] * nkeys
    conn = Resp(port)
    deadline = time.monotonic() + seconds
    ops = gets = 0

    def check(k, want, got):
        if got != want:
            print(
                "VERIFY-FAIL soak_redis: key soak:%d: expected %s, got %s"
                % (
                    k,
                    "nothing" if want is None else "%d bytes" % len(want),
                    "nothing" if got is None else "%d bytes" % len(got),
                ),
                file=sys.stderr,
            )
            sys.exit(3)

    while time.monotonic() < deadline:
        batch, expect = [], []
        for _ in range(64):
            k = rng.randrange(nkeys)
            r = rng.random()
            if r < 0.40 or k not in model and r < 0.8:
                version[k] += 1
                v = value(k, version[k], skewed_size(rng))
                batch.append((b"SET", b"soak:%d" % k, v))
                expect.append(None)
                model[k] = v
            elif r < 0.85:
                batch.append((b"GET", b"soak:%d" % k))
                expect.append((k, model.get(k)))
            elif r < 0.95 and k in model:
                version[k] += 1
                tail = value(k, version[k], rng.randint(1, 4096))
                batch.append((b"APPEND", b"soak:%d" % k, tail))
                expect.append(None)
                model[k] = model[k] + tail
            else:
                batch.append((b"DEL", b"soak:%d" % k))
                expect.append(None)
                model.pop(k, None)
        # A GET's reply is checked against the model as it stood when the GET was queued.
        conn.send(batch)
        for e in expect:
            got = conn.reply()
            if e is not None:
                check(e[0], e[1], got)
                gets += 1
            ops += 1
    # Final pass: every key, present or not.
    for start in range(0, nkeys, 256):
        keys = list(range(start, min(nkeys, start + 256)))
        conn.send([(b"GET", b"soak:%d" % k) for k in keys])
        for k in keys:
            check(k, model.get(k), conn.reply())
    total = sum(len(v) for v in model.values())
    print(
        "soak_redis: %d operations (%d GETs checked), final pass: %d keys, %d bytes, all match"
        % (ops, gets, len(model), total)
    )


if __name__ == "__main__":
    try:
        main()
    except (ConnectionError, OSError) as e:
        print("soak_redis: %s" % e, file=sys.stderr)
        sys.exit(5)
