//! What a Couchbase SDK needs to bootstrap from the KV port alone: the
//! bucket config with its `vBucketServerMap` (GET_CLUSTER_CONFIG, and the
//! body of NOT_MY_VBUCKET), the error map (GET_ERROR_MAP), and the vbucket
//! hash clients use.
//!
//! ```
//! // CRC32 of the key, bits 16..31, modulo the vbucket count.
//! assert_eq!(kvserver::cluster::vbucket_of(b"foo", 1024), kvserver::cluster::vbucket_of(b"foo", 1024));
//! assert!(kvserver::cluster::vbucket_of(b"foo", 64) < 64);
//! ```

use crate::protocol::{status, status_name};
use serde_json::{Value, json};

/// The vbucket of `key` as Couchbase clients compute it.
#[must_use]
pub fn vbucket_of(key: &[u8], vbuckets: usize) -> u16 {
    let crc = crc32fast::hash(key);
    let n = vbuckets.max(1) as u32;
    u16::try_from(((crc >> 16) & 0x7fff) % n).unwrap_or(0)
}

/// The bucket config a client bootstraps from. One node (this one) serves
/// every vbucket. `host` is the address the client connected to.
#[must_use]
pub fn bucket_config(
    bucket: &str,
    host: &str,
    port: u16,
    vbuckets: usize,
    rev: u64,
    manifest_uid: u64,
) -> Value {
    let map: Vec<Value> = (0..vbuckets).map(|_| json!([0])).collect();
    json!({
        "rev": rev,
        "revEpoch": 1,
        "name": bucket,
        "uuid": format!("{:032x}", crc32fast::hash(bucket.as_bytes())),
        "nodeLocator": "vbucket",
        "bucketCapabilitiesVer": "",
        "bucketCapabilities": ["collections", "durableWrite", "cbhello", "touch", "cccp", "nodesExt", "xattr"],
        "collectionsManifestUid": format!("{manifest_uid:x}"),
        "nodes": [{
            "hostname": format!("{host}:8091"),
            "ports": {"direct": port},
        }],
        "nodesExt": [{
            "services": {"kv": port},
            "thisNode": true,
            "hostname": host,
        }],
        "vBucketServerMap": {
            "hashAlgorithm": "CRC",
            "numReplicas": 0,
            "serverList": [format!("{host}:{port}")],
            "vBucketMap": map,
        },
        "clusterCapabilitiesVer": [1, 0],
        "clusterCapabilities": {},
    })
}

/// The config of the node when no bucket is selected (a "global" config).
#[must_use]
pub fn global_config(host: &str, port: u16, rev: u64) -> Value {
    json!({
        "rev": rev,
        "revEpoch": 1,
        "nodesExt": [{
            "services": {"kv": port},
            "thisNode": true,
            "hostname": host,
        }],
        "clusterCapabilitiesVer": [1, 0],
        "clusterCapabilities": {},
    })
}

/// The error map, version 1 or 2 (the highest at or below `version`).
#[must_use]
pub fn error_map(version: u16) -> Value {
    use status::*;
    let attrs = |s: u16| -> Vec<&'static str> {
        match s {
            SUCCESS => vec!["success"],
            KEY_ENOENT | KEY_EEXISTS | NOT_STORED | DELTA_BADVAL => vec!["item-only"],
            E2BIG | EINVAL | ERANGE | DURABILITY_INVALID_LEVEL => vec!["invalid-input"],
            NOT_MY_VBUCKET => vec!["fetch-config", "retry-later"],
            NO_BUCKET => vec!["conn-state-invalidated"],
            AUTH_STALE => vec!["conn-state-invalidated"],
            AUTH_ERROR => vec!["conn-state-invalidated", "auth"],
            AUTH_CONTINUE => vec!["special-handling", "auth"],
            EACCESS => vec!["auth"],
            UNKNOWN_FRAME_INFO | UNKNOWN_COMMAND | NOT_SUPPORTED => vec!["support"],
            ENOMEM | EBUSY | ETMPFAIL => vec!["temp", "retry-later"],
            EINTERNAL => vec!["internal"],
            UNKNOWN_COLLECTION | UNKNOWN_SCOPE => vec!["fetch-config", "item-only"],
            CANNOT_APPLY_MANIFEST => vec!["internal"],
            DURABILITY_IMPOSSIBLE => vec!["item-only"],
            _ => vec!["internal"],
        }
    };
    let codes = [
        SUCCESS,
        KEY_ENOENT,
        KEY_EEXISTS,
        E2BIG,
        EINVAL,
        NOT_STORED,
        DELTA_BADVAL,
        NOT_MY_VBUCKET,
        NO_BUCKET,
        AUTH_STALE,
        AUTH_ERROR,
        AUTH_CONTINUE,
        ERANGE,
        EACCESS,
        UNKNOWN_FRAME_INFO,
        UNKNOWN_COMMAND,
        ENOMEM,
        NOT_SUPPORTED,
        EINTERNAL,
        EBUSY,
        ETMPFAIL,
        UNKNOWN_COLLECTION,
        CANNOT_APPLY_MANIFEST,
        UNKNOWN_SCOPE,
        DURABILITY_INVALID_LEVEL,
        DURABILITY_IMPOSSIBLE,
    ];
    let mut errors = serde_json::Map::new();
    for c in codes {
        let (name, desc) = status_name(c);
        let mut e = json!({"name": name, "desc": desc, "attrs": attrs(c)});
        if matches!(c, ENOMEM | EBUSY | ETMPFAIL | NOT_MY_VBUCKET) {
            e["retry"] = json!({"strategy": "exponential", "interval": 10, "after": 10, "max-duration": 5000, "ceil": 500});
        }
        errors.insert(format!("{c:x}"), e);
    }
    json!({"version": version.clamp(1, 2), "revision": 1, "errors": errors})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Values from libcouchbase's vbucket hashing (CRC32, bits 16..30).
    #[test]
    fn hash_matches_clients() {
        // crc32("foo") = 0x8c736521: (0x8c73 & 0x7fff) = 0x0c73 = 3187.
        assert_eq!(crc32fast::hash(b"foo"), 0x8c73_6521);
        assert_eq!(vbucket_of(b"foo", 1024), 3187 % 1024);
        assert_eq!(vbucket_of(b"foo", 64), 3187 % 64);
    }

    #[test]
    fn config_shape() {
        let c = bucket_config("default", "127.0.0.1", 11210, 4, 7, 0x1f);
        assert_eq!(
            c["vBucketServerMap"]["vBucketMap"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        assert_eq!(c["collectionsManifestUid"], "1f");
        assert_eq!(c["nodesExt"][0]["services"]["kv"], 11210);
        let m = error_map(2);
        assert_eq!(m["errors"]["1"]["name"], "KEY_ENOENT");
        assert_eq!(error_map(9)["version"], 2);
    }
}
