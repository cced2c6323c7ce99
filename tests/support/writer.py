#!/usr/bin/python3
"""An application writing to a SQLite database the way cron jobs and PHP apps do: a NEW
connection per transaction, SQLite's default autocheckpoint left on, the connection
closed after each commit (so this process holds no connection between transactions).

After every commit it appends one line to the record file and fsyncs it before the next
commit:

    <seq> <content hash, 16 hex digits> <row count>

The content hash is FNV-1a 64 over the canonical text of
`SELECT id, v, length(pad) FROM t ORDER BY id`: one line `<id>|<v>|<padlen>\n` per row
(UTF-8; `v` is ASCII). tests/daemon/harness.rs computes the same hash from any restored
database. The hash is taken inside the transaction, just before COMMIT, so it is exactly
the state that commit produced. Lines starting with `#` are notes (checkpoint results),
ignored by the checker. Sequence numbers continue from the record file's last line, so
several writer processes can take turns on one database and one record.

Run `writer.py --help` for the options. Exit status 0 when every transaction committed.
"""

import argparse
import os
import random
import sqlite3
import sys
import time

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = (1 << 64) - 1

CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")


def fnv1a64(data, h=FNV_OFFSET):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def content_hash(con):
    h = FNV_OFFSET
    rows = 0
    for rid, v, padlen in con.execute("SELECT id, v, length(pad) FROM t ORDER BY id"):
        h = fnv1a64(f"{rid}|{v}|{padlen}\n".encode(), h)
        rows += 1
    return h, rows


def last_seq(record):
    seq = None
    try:
        with open(record) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    seq = int(line.split()[0])
    except FileNotFoundError:
        pass
    return seq


class Record:
    def __init__(self, path):
        self.f = open(path, "a")

    def line(self, text):
        self.f.write(text + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())


def connect(db):
    # isolation_level=None: no implicit transactions; we say BEGIN and COMMIT.
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    return con


def init(db, record):
    con = connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("BEGIN IMMEDIATE")
    con.execute(
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, pad BLOB NOT NULL)"
    )
    h, rows = content_hash(con)
    con.execute("COMMIT")
    con.close()
    seq = last_seq(record)
    rec = Record(record)
    rec.line(f"{0 if seq is None else seq + 1} {h:016x} {rows}")


def value(rng, seq, i, width=None):
    base = f"s{seq}.{i}."
    if width is None:
        width = len(base) + rng.randrange(0, 60)
    return (base + "abcdefghijklmnopqrstuvwxyz" * 4)[:width].ljust(width, "z")


def transaction(con, rng, seq, args):
    """One transaction of the normal kind: inserts, an update, sometimes deletes."""
    for i in range(args.rows):
        con.execute(
            "INSERT INTO t(v, pad) VALUES (?, zeroblob(?))",
            (value(rng, seq, i), rng.randrange(0, args.max_pad + 1)),
        )
    con.execute(
        "UPDATE t SET v = ?, pad = zeroblob(?) WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 2)",
        (value(rng, seq, "u"), rng.randrange(0, args.max_pad + 1)),
    )
    (count,) = con.execute("SELECT count(*) FROM t").fetchone()
    if count > args.max_rows:
        con.execute(
            "DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id LIMIT ?)",
            (count - args.max_rows + rng.randrange(0, 5),),
        )


FIXED_ROWS = 8
FIXED_WIDTH = 40
FIXED_PAD = 700


def fixed_transaction(con, seq):
    """Same rows, same sizes: every such transaction writes the same pages, so after a
    WAL restart the WAL is rewritten at an unchanged size."""
    (count,) = con.execute("SELECT count(*) FROM t WHERE id <= ?", (FIXED_ROWS,)).fetchone()
    if count < FIXED_ROWS:
        for rid in range(1, FIXED_ROWS + 1):
            con.execute(
                "INSERT OR IGNORE INTO t(id, v, pad) VALUES (?, ?, zeroblob(?))",
                (rid, "f" * FIXED_WIDTH, FIXED_PAD),
            )
    for rid in range(1, FIXED_ROWS + 1):
        v = f"fixed.{seq:012d}.{rid:04d}".ljust(FIXED_WIDTH, "f")[:FIXED_WIDTH]
        con.execute("UPDATE t SET v = ?, pad = zeroblob(?) WHERE id = ?", (v, FIXED_PAD, rid))


def checkpoint(con, mode, rec, seq):
    # RESTART and TRUNCATE wait (busy handler) for readers to finish; a replicator that
    # holds a read transaction makes them report busy, which is expected: record it.
    con.execute("PRAGMA busy_timeout=200")
    try:
        busy, log, done = con.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        rec.line(f"# checkpoint {mode} after {seq}: busy={busy} log={log} checkpointed={done}")
        return busy
    except sqlite3.OperationalError as e:
        rec.line(f"# checkpoint {mode} after {seq}: error {e}")
        return 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--init", action="store_true", help="create the schema, record state 0")
    p.add_argument("--txns", type=int, default=100)
    p.add_argument("--rows", type=int, default=3, help="rows inserted per transaction")
    p.add_argument("--max-rows", type=int, default=400)
    p.add_argument("--max-pad", type=int, default=3000, help="largest zeroblob per row")
    p.add_argument(
        "--checkpoint",
        default="",
        help="comma-separated modes (PASSIVE,FULL,RESTART,TRUNCATE) cycled every --checkpoint-every commits",
    )
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument(
        "--fixed",
        action="store_true",
        help="every transaction updates the same rows with same-size values",
    )
    p.add_argument(
        "--fixed-after-restart",
        type=int,
        default=0,
        help="after each RESTART checkpoint, this many fixed-size transactions",
    )
    p.add_argument("--sleep-ms", type=float, default=0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    if args.init:
        init(args.db, args.record)
        return 0
    modes = [m.strip().upper() for m in args.checkpoint.split(",") if m.strip()]
    for m in modes:
        if m not in CHECKPOINT_MODES:
            p.error(f"unknown checkpoint mode {m}")
    seq = last_seq(args.record)
    if seq is None:
        p.error("the record file has no state yet: run with --init first")
    rng = random.Random(args.seed * 1_000_003 + seq)
    rec = Record(args.record)
    fixed_left = 0
    checkpoints = 0
    busy = 0
    for n in range(args.txns):
        seq += 1
        con = connect(args.db)
        con.execute("BEGIN IMMEDIATE")
        if args.fixed or fixed_left > 0:
            fixed_transaction(con, seq)
            fixed_left = max(0, fixed_left - 1)
        else:
            transaction(con, rng, seq, args)
        h, rows = content_hash(con)
        con.execute("COMMIT")
        rec.line(f"{seq} {h:016x} {rows}")
        if modes and args.checkpoint_every and (n + 1) % args.checkpoint_every == 0:
            mode = modes[checkpoints % len(modes)]
            checkpoints += 1
            busy += checkpoint(con, mode, rec, seq)
            if mode == "RESTART":
                fixed_left = args.fixed_after_restart
        con.close()
        if args.sleep_ms:
            time.sleep(args.sleep_ms / 1000)
    print(f"writer: {args.txns} transactions up to seq {seq}, {checkpoints} checkpoints ({busy} busy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
