"""The official Couchbase Python SDK against kvserver.

Usage: sdk_test.py PORT USER PASSWORD SCOPE COLLECTION
The scope.collection must exist (the Rust test sets the manifest through
the protocol first). Prints one line per check and "SDK OK" at the end;
any failure raises and exits non-zero.
"""
import sys
from datetime import timedelta

from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.durability import Durability, ServerDurability
from couchbase.exceptions import (
    CasMismatchException,
    CollectionNotFoundException,
    DocumentExistsException,
    DocumentNotFoundException,
    UnAmbiguousTimeoutException,
    AmbiguousTimeoutException,
)
from couchbase.options import (
    ClusterOptions,
    ClusterTimeoutOptions,
    DecrementOptions,
    DeltaValue,
    GetOptions,
    IncrementOptions,
    InsertOptions,
    ReplaceOptions,
    SignedInt64,
    UpsertOptions,
)

port, user, password, scope_name, coll_name = sys.argv[1:6]
timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=30), kv_durable_timeout=timedelta(seconds=30),
                                 connect_timeout=timedelta(seconds=20))
opts = ClusterOptions(PasswordAuthenticator(user, password), timeout_options=timeouts)
cluster = Cluster(f"couchbase://127.0.0.1:{port}", opts)
bucket = cluster.bucket("default")



def check(name, cond):
    if not cond:
        raise AssertionError(f"check failed: {name}")
    print(f"ok {name}", flush=True)


def expect(name, exc, fn):
    try:
        fn()
    except exc as e:
        print(f"ok {name}: {type(e).__name__}", flush=True)
        return
    raise AssertionError(f"{name}: expected {exc.__name__}, got no error")


def exercise(coll, tag):
    k = f"doc-{tag}"
    coll.upsert(k, {"n": 1, "tag": tag})
    check(f"{tag} get after upsert", coll.get(k).content_as[dict] == {"n": 1, "tag": tag})
    expect(f"{tag} insert existing", DocumentExistsException, lambda: coll.insert(k, {"n": 2}))
    r = coll.insert(f"{k}-new", {"fresh": True})
    check(f"{tag} insert new", r.cas != 0)
    g = coll.get(k)
    expect(f"{tag} replace stale cas", CasMismatchException,
           lambda: coll.replace(k, {"n": 3}, ReplaceOptions(cas=g.cas + 1)))
    r = coll.replace(k, {"n": 3}, ReplaceOptions(cas=g.cas))
    check(f"{tag} replace with cas", r.cas != g.cas and coll.get(k).content_as[dict] == {"n": 3})
    expect(f"{tag} replace missing", DocumentNotFoundException,
           lambda: coll.replace(f"{k}-missing", {"n": 0}))
    coll.remove(f"{k}-new")
    expect(f"{tag} get removed", DocumentNotFoundException, lambda: coll.get(f"{k}-new"))
    expect(f"{tag} remove missing", DocumentNotFoundException, lambda: coll.remove(f"{k}-new"))
    # touch and get_and_touch are mutations (new CAS); the Rust side checks
    # the expiry they set through `stats key`.
    before = coll.get(k).cas
    t = coll.touch(k, timedelta(seconds=3600))
    check(f"{tag} touch changes cas", t.cas != before)
    gt = coll.get_and_touch(k, timedelta(seconds=7200))
    check(f"{tag} get_and_touch value", gt.content_as[dict] == {"n": 3} and gt.cas != t.cas)
    expect(f"{tag} touch missing", DocumentNotFoundException,
           lambda: coll.touch(f"{k}-none", timedelta(seconds=5)))
    # counters
    ctr = f"ctr-{tag}"
    r = coll.binary().increment(ctr, IncrementOptions(initial=SignedInt64(10)))
    check(f"{tag} increment creates", r.content == 10)
    r = coll.binary().increment(ctr, IncrementOptions(delta=DeltaValue(5)))
    check(f"{tag} increment", r.content == 15)
    r = coll.binary().decrement(ctr, DecrementOptions(delta=DeltaValue(20)))
    check(f"{tag} decrement floors at 0", r.content == 0)
    expect(f"{tag} increment missing without initial", DocumentNotFoundException,
           lambda: coll.binary().increment(f"{ctr}-none", IncrementOptions(initial=SignedInt64(-1))))
    # durable upserts at persistToMajority
    dur = UpsertOptions(durability=ServerDurability(Durability.PERSIST_TO_MAJORITY))
    for i in range(20):
        coll.upsert(f"durable-{tag}-{i}", {"i": i}, dur)
    check(f"{tag} durable upserts read back",
          all(coll.get(f"durable-{tag}-{i}").content_as[dict] == {"i": i} for i in range(20)))
    for level in (Durability.MAJORITY, Durability.MAJORITY_AND_PERSIST_TO_ACTIVE):
        coll.upsert(f"durable-{tag}-level", {"l": str(level)},
                    UpsertOptions(durability=ServerDurability(level)))
    check(f"{tag} every durability level", True)
    # a large, compressible document (the SDK sends it snappy-compressed)
    big = {"text": "abcdefgh" * 4000}
    coll.upsert(f"big-{tag}", big)
    check(f"{tag} large document", coll.get(f"big-{tag}").content_as[dict] == big)


exercise(bucket.default_collection(), "default")
exercise(bucket.scope(scope_name).collection(coll_name), "named")

# A collection that does not exist reaches the SDK as collection-not-found
# (the SDK may retry until its timeout; the retry reason says why).
missing = bucket.scope(scope_name).collection("no_such_collection")
try:
    missing.upsert("x", {"x": 1}, UpsertOptions(timeout=timedelta(seconds=3)))
    raise AssertionError("upsert to a missing collection succeeded")
except CollectionNotFoundException as e:
    print("ok missing collection: CollectionNotFoundException", flush=True)
except (UnAmbiguousTimeoutException, AmbiguousTimeoutException) as e:
    text = str(e).lower()
    # The C++ core retries an unknown collection (it may be being created)
    # and names the reason: the server answered UNKNOWN_COLLECTION.
    if not any(r in text for r in ("collection_outdated", "collection_not_found")):
        raise
    print("ok missing collection: timeout, retry reason collection outdated/not found", flush=True)

cluster.close()
print("SDK OK", flush=True)
