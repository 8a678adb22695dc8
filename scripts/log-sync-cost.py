#!/usr/bin/env python3
"""Cost of one durable log write, by method, on the file system of DIR (default: here).

    scripts/log-sync-cost.py [DIR] [WRITES]

For each method, WRITES (default 3000) durable writes of one log commit (3000 bytes, or one
4096-byte block for direct I/O), one after the other: wall time and kernel CPU (system time of
this process) per write. The methods are what weft's log can do (crates/weft-store/src/embedded/
wal.rs): `write` + `fdatasync` appending to a growing file (the fallback), the same on a file
written with zeros beforehand, `O_DSYNC` writes, and `O_DIRECT | O_DSYNC` block writes
(appending, and overwriting the tail block as weft does). Not counted: the file system's
journal thread, which works for the `fdatasync` of a growing file.
"""
import mmap
import os
import resource
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
N = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
PATH = os.path.join(DIR, "log-sync-cost.tmp")
BLOCK = 4096


def fresh(zeros=0):
    if os.path.exists(PATH):
        os.remove(PATH)
    if zeros:
        fd = os.open(PATH, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"\0" * zeros)
        os.fsync(fd)
        os.close(fd)


def measure(label, prepare, run):
    prepare()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run()
    t = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"| {label} | {t / N * 1e6:.0f} | {(r1.ru_stime - r0.ru_stime) / N * 1e6:.0f} |")


def append_fdatasync():
    fd = os.open(PATH, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    for _ in range(N):
        os.write(fd, b"x" * 3000)
        os.fdatasync(fd)
    os.close(fd)


def zeroed_fdatasync():
    fd = os.open(PATH, os.O_WRONLY)
    for i in range(N):
        os.pwrite(fd, b"x" * 3000, i * 3000)
        os.fdatasync(fd)
    os.close(fd)


def zeroed_dsync():
    fd = os.open(PATH, os.O_WRONLY | os.O_DSYNC)
    for i in range(N):
        os.pwrite(fd, b"x" * 3000, i * 3000)
    os.close(fd)


def fallocated(size):
    fresh()
    fd = os.open(PATH, os.O_CREAT | os.O_WRONLY, 0o644)
    os.posix_fallocate(fd, 0, size)
    os.fsync(fd)
    os.close(fd)


BUF = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
BUF.write(b"x" * BLOCK)


def direct(step):
    def run():
        fd = os.open(PATH, os.O_CREAT | os.O_WRONLY | os.O_DIRECT | os.O_DSYNC, 0o644)
        for i in range(N):
            os.pwrite(fd, BUF, (i // step) * BLOCK)
        os.close(fd)
    return run


print(f"{N} durable writes in {os.path.abspath(DIR)}\n")
print("| method | µs per write | kernel CPU µs per write |")
print("|---|---:|---:|")
measure("write + fdatasync, growing file", fresh, append_fdatasync)
measure("pwrite + fdatasync, zero-filled file", lambda: fresh(N * 3000 + BLOCK), zeroed_fdatasync)
measure("pwrite O_DSYNC, zero-filled file", lambda: fresh(N * 3000 + BLOCK), zeroed_dsync)
measure("pwrite O_DIRECT|O_DSYNC, growing file (weft)", fresh, direct(1))
measure("pwrite O_DIRECT|O_DSYNC, tail block rewritten 4x", fresh, direct(4))
measure("pwrite O_DIRECT|O_DSYNC, fallocated file", lambda: fallocated(N * BLOCK), direct(1))
measure("pwrite O_DIRECT|O_DSYNC, zero-filled file", lambda: fresh(N * BLOCK), direct(1))
measure("pwrite O_DIRECT|O_DSYNC, zero-filled file, tail block rewritten 4x", lambda: fresh(N * BLOCK), direct(4))
os.remove(PATH)
