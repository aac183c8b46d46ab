#!/usr/bin/env python3
"""kafka_partition.py N - for each key on stdin (one per line), print
"key<TAB>partition" where partition = (murmur2(key) & 0x7fffffff) % N, Kafka's
default partitioner (Utils.murmur2, seed 0x9747b28c). The helper checks itself
against Kafka's published vectors first, so a wrong helper fails loudly
instead of making a routing test pass or fail by accident."""
import sys


def murmur2(data: bytes) -> int:
    m, r = 0x5BD1E995, 24
    n = len(data)
    h = (0x9747B28C ^ n) & 0xFFFFFFFF
    for i in range(0, n - n % 4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = n & ~3
    rem = n % 4
    if rem == 3:
        h ^= data[tail + 2] << 16
    if rem >= 2:
        h ^= data[tail + 1] << 8
    if rem >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


VECTORS = {b"21": -973932308, b"foobar": -790332482, b"abc": 479470107,
           b"a-little-bit-long-string": -985981536,
           b"a-little-bit-longer-string": -1486304829}
for key, want in VECTORS.items():
    got = murmur2(key)
    if got != want:
        sys.exit(f"kafka_partition.py: murmur2({key!r}) = {got}, Kafka says {want}")

if __name__ == "__main__":
    n = int(sys.argv[1])
    for line in sys.stdin.buffer:
        key = line.rstrip(b"\n")
        sys.stdout.write(f"{key.decode()}\t{(murmur2(key) & 0x7FFFFFFF) % n}\n")
