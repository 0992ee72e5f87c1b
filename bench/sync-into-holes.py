#!/usr/bin/env python3
"""What a 4 KiB write + fdatasync costs on the file system holding DIR: into holes of a sparse file, into
posix_fallocate'd (unwritten) space, and over blocks already written. Platter's data file is sparse, so a
copy-on-write write into never-written space pays the first kind (docs/PERFORMANCE.md, issue 15).

Usage: bench/sync-into-holes.py [DIR] [WRITES]   (default: the current directory, 2000 writes per case)
Writes a 1 GiB sparse scratch file in DIR and removes it. Python standard library only.
"""
import os
import random
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "."
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
size = 1 << 30
path = os.path.join(directory, "sync-into-holes.scratch")
buf = os.urandom(4096)


def run(fd, label, offsets):
    lat = []
    for off in offsets:
        t = time.perf_counter()
        os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
    lat.sort()
    print(f"{label}: {len(lat) / sum(lat):,.0f} ops/s  p50 {lat[len(lat) // 2] * 1e6:,.0f} us  "
          f"p99 {lat[int(len(lat) * 0.99)] * 1e6:,.0f} us")


fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
try:
    os.ftruncate(fd, size)
    blocks = random.sample(range(size // 4096 // 2), n)
    holes = [b * 4096 for b in blocks]
    sequential = [size // 2 + i * 4096 for i in range(n)]
    run(fd, "random into holes", holes)
    run(fd, "sequential into holes", sequential)
    run(fd, "random over written blocks", random.sample(holes, n))
    run(fd, "sequential over written blocks", sequential)
    os.ftruncate(fd, 0)
    os.posix_fallocate(fd, 0, size)
    run(fd, "sequential into fallocated (unwritten) space", sequential)
finally:
    os.close(fd)
    os.unlink(path)
