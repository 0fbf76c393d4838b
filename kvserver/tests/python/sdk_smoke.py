import sys, datetime
from couchbase.cluster import Cluster
from couchbase.auth import PasswordAuthenticator
from couchbase.options import ClusterOptions
port = int(sys.argv[1])
cluster = Cluster(f"couchbase://127.0.0.1:{port}", ClusterOptions(PasswordAuthenticator("app", "secret")))
b = cluster.bucket("default")
c = b.default_collection()
r = c.upsert("k1", {"a": 1})
print("upsert cas", r.cas)
print("get", c.get("k1").content_as[dict])
