"""pymemcache (text protocol) and python-binary-memcached (binary) against
a server. Usage: memcache_clients.py PORT. Prints "CLIENTS OK" at the end."""
import sys

import bmemcached
from pymemcache.client.base import Client as TextClient

port = int(sys.argv[1])


def check(name, cond):
    if not cond:
        raise AssertionError(f"check failed: {name}")
    print(f"ok {name}", flush=True)


# --- pymemcache: the text protocol ---
t = TextClient(("127.0.0.1", port), default_noreply=False)
check("text set", t.set("pk", b"hello", expire=0) is True)
check("text get", t.get("pk") == b"hello")
check("text add existing", t.add("pk", b"x") is False)
check("text add new", t.add("pk2", b"two") is True)
check("text replace", t.replace("pk2", b"TWO") is True)
check("text replace missing", t.replace("nope", b"x") is False)
check("text append", t.append("pk", b" world") is True)
check("text prepend", t.prepend("pk", b">> ") is True)
check("text get after concat", t.get("pk") == b">> hello world")
value, cas = t.gets("pk")
check("text gets", value == b">> hello world" and cas is not None)
check("text cas mismatch", t.cas("pk", b"new", int(cas) + 1) is False)
check("text cas match", t.cas("pk", b"new", cas) is True)
check("text cas missing", t.cas("absent", b"x", 1) is None)
check("text get_many", t.get_many(["pk", "pk2", "absent"]) == {"pk": b"new", "pk2": b"TWO"})
t.set("n", b"10")
check("text incr", t.incr("n", 5) == 15)
check("text decr", t.decr("n", 100) == 0)
check("text incr missing", t.incr("absent", 1) is None)
check("text touch", t.touch("pk", 100) is True)
check("text touch missing", t.touch("absent", 100) is False)
check("text delete", t.delete("pk2") is True)
check("text delete missing", t.delete("pk2") is False)
check("text get deleted", t.get("pk2") is None)
check("text set noreply", t.set("nr", b"v", noreply=True) is True)
check("text get noreply", t.get("nr") == b"v")
check("text stats", b"curr_connections" in t.stats() or "curr_connections" in {k.decode() if isinstance(k, bytes) else k for k in t.stats()})
check("text version", len(t.version()) > 0)
t.close()

# --- python-binary-memcached: the binary protocol ---
b = bmemcached.Client((f"127.0.0.1:{port}",))
check("binary set", b.set("bk", "hello") is True)
check("binary get", b.get("bk") == "hello")
check("binary add existing", b.add("bk", "x") is False)
check("binary add new", b.add("bk2", "two") is True)
check("binary replace", b.replace("bk2", "TWO") is True)
check("binary replace missing", b.replace("nope", "x") is False)
v, cas = b.gets("bk")
check("binary gets", v == "hello" and cas)
check("binary cas mismatch", b.cas("bk", "new", cas + 1) is False)
check("binary cas match", b.cas("bk", "new", cas) is True)
check("binary get_multi", b.get_multi(["bk", "bk2", "absent"]) == {"bk": "new", "bk2": "TWO"})
check("binary set_multi", b.set_multi({"m1": "a", "m2": "b"}) in (True, []))
check("binary get after set_multi", b.get_multi(["m1", "m2"]) == {"m1": "a", "m2": "b"})
b.set("num", 10)
check("binary int roundtrip", b.get("num") == 10)
b.set("numstr", "10")
check("binary incr", b.incr("numstr", 5) == 15)
check("binary decr", b.decr("numstr", 100) == 0)
check("binary delete", b.delete("bk2") is True)
# (bmemcached reports a delete of a missing key as True, by design.)
check("binary get deleted", b.get("bk2") is None)

check("binary stats", any("pid" in s for s in b.stats().values()))
# Cross-protocol: a key written in binary reads back in text (both hash
# keys to vbuckets the same way).
t = TextClient(("127.0.0.1", port))
check("text reads binary's key", t.get("bk") == b"new")
b.disconnect_all()
print("CLIENTS OK", flush=True)
