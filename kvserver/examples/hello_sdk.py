"""One call through the official Couchbase Python SDK to a local kvserver.

Usage: hello_sdk.py [USER] [PASSWORD] (defaults: app, secret)."""
import sys

from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.options import ClusterOptions

user, password = (sys.argv[1:3] + ["app", "secret"][len(sys.argv[1:3]):])
cluster = Cluster("couchbase://127.0.0.1", ClusterOptions(PasswordAuthenticator(user, password)))
docs = cluster.bucket("default").default_collection()
docs.upsert("hello", {"greeting": "hello from kvserver"})
print(docs.get("hello").content_as[dict])
cluster.close()
