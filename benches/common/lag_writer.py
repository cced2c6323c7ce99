#!/usr/bin/python3
"""The application beside the daemon in benches/replication_lag.rs: one connection kept
open, SQLite's defaults (WAL mode, synchronous FULL, autocheckpoint at 1000 pages), one
row of `--row-bytes` random bytes per transaction.

After each COMMIT returns it takes the wall-clock time (time.time_ns, the clock the bench
compares with) and appends `<time_ns> <rows>` to the log, `rows` being the table's row
count after that commit (this process is the only writer and never deletes, so it is the
count it started with plus the commits it made). The log is written through a buffer and
flushed at exit: the bench reads it only after the writer ended, and an fsync per line
would be load the measurement does not want.

Pacing: with `--rate R`, transaction i starts at start + i/R (late ones start at once, so
a stall is followed by a burst, as an application's queue would be); with `--gap-ms G`,
each transaction starts G ms after the previous COMMIT returned, so commits are at least
that far apart.
"""

import argparse
import os
import sqlite3
import sys
import time


def connect(db):
    # isolation_level=None: we say BEGIN and COMMIT ourselves.
    return sqlite3.connect(db, timeout=30, isolation_level=None)


def init(db, rows, row_bytes):
    con = connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    con.execute("BEGIN")
    for _ in range(rows):
        con.execute("INSERT INTO t(v) VALUES (randomblob(?))", (row_bytes,))
    con.execute("COMMIT")
    con.close()


def run(args):
    con = connect(args.db)
    (rows,) = con.execute("SELECT count(*) FROM t").fetchone()
    log = open(args.log, "a", buffering=1 << 20)
    start = time.monotonic()
    deadline = start + args.secs
    i = 0
    while True:
        now = time.monotonic()
        if args.rate:
            due = start + i / args.rate
            if due > now:
                time.sleep(due - now)
        if time.monotonic() >= deadline or (args.txns and i >= args.txns):
            break
        con.execute("BEGIN")
        con.execute("INSERT INTO t(v) VALUES (randomblob(?))", (args.row_bytes,))
        con.execute("COMMIT")
        t = time.time_ns()
        rows += 1
        i += 1
        log.write(f"{t} {rows}\n")
        if args.gap_ms:
            time.sleep(args.gap_ms / 1000)
    log.flush()
    os.fsync(log.fileno())
    log.close()
    con.close()
    print(f"lag_writer: {i} commits in {time.monotonic() - start:.2f} s, {rows} rows")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--log")
    p.add_argument("--init", type=int, metavar="ROWS", help="create the table with ROWS rows")
    p.add_argument("--row-bytes", type=int, default=1024)
    p.add_argument("--rate", type=float, default=0, help="transactions per second")
    p.add_argument("--gap-ms", type=float, default=0, help="pause after each commit")
    p.add_argument("--secs", type=float, default=30)
    p.add_argument("--txns", type=int, default=0, help="stop after this many (0: no limit)")
    args = p.parse_args()
    if args.init is not None:
        init(args.db, args.init, args.row_bytes)
        return 0
    if not args.log:
        p.error("--log is required unless --init")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
