#!/usr/bin/env python3
"""genlines.py BYTES [SEED] - print realistic, varied access-log lines (no
padding with one repeated character) until at least BYTES bytes, from a fixed
seed so every run produces the same file. Numbered: line i contains "#i "."""
import random
import sys

total = int(sys.argv[1])
rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 42)
paths = ["/", "/index.html", "/api/v1/orders", "/api/v1/users", "/static/app.js",
         "/static/style.css", "/login", "/logout", "/search", "/img/logo.png"]
agents = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/118.0", "curl/7.88.1",
          "Mozilla/5.0 (Macintosh) Safari/605.1.15", "Go-http-client/1.1",
          "python-requests/2.31.0"]
methods = ["GET"] * 8 + ["POST", "PUT", "DELETE"]
statuses = [200] * 12 + [201, 204, 301, 302, 304, 400, 401, 403, 404, 500, 503]
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(3, 12)))
         for _ in range(1024)]
out = sys.stdout.buffer
written = 0
i = 0
chunk = []
while written < total:
    i += 1
    line = ('#%d %d.%d.%d.%d - u%d [21/Nov/2026:%02d:%02d:%02d +0000] "%s %s?id=%x&q=%s HTTP/1.1" '
            '%d %d "%s" rt=%.3f\n') % (
        i, rng.randrange(1, 255), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255),
        rng.randrange(10000), rng.randrange(24), rng.randrange(60), rng.randrange(60),
        rng.choice(methods), rng.choice(paths), rng.getrandbits(40),
        words[rng.getrandbits(10)],
        rng.choice(statuses), rng.randrange(20, 200000), rng.choice(agents), rng.random() * 2)
    b = line.encode()
    chunk.append(b)
    written += len(b)
    if len(chunk) >= 4096:
        out.write(b"".join(chunk))
        chunk = []
out.write(b"".join(chunk))
