"""Durable upserts through the Couchbase SDK until killed.

Usage: crash_writer.py PORT USER PASSWORD PREFIX
Prints "READY" once connected, then "ACK <key>" after each upsert at
persistToMajority is acknowledged."""
import sys
from datetime import timedelta

from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.durability import Durability, ServerDurability
from couchbase.options import ClusterOptions, ClusterTimeoutOptions, UpsertOptions

port, user, password, prefix = sys.argv[1:5]
timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=10), kv_durable_timeout=timedelta(seconds=30))
cluster = Cluster(f"couchbase://127.0.0.1:{port}",
                  ClusterOptions(PasswordAuthenticator(user, password), timeout_options=timeouts))
coll = cluster.bucket("default").default_collection()
dur = UpsertOptions(durability=ServerDurability(Durability.PERSIST_TO_MAJORITY))
print("READY", flush=True)
i = 0
while True:
    key = f"{prefix}-{i}"
    coll.upsert(key, {"i": i, "prefix": prefix}, dur)
    print(f"ACK {key}", flush=True)
    i += 1
