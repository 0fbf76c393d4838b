//! Documents, their metadata, local documents and the persisted vbucket state.

use crate::error::{StoreError, StoreResult};
use crate::key::DiskKey;
use crate::types::{Cas, RevSeqno, Seqno};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The datatype bits of a value, as memcached defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Datatype(pub u8);

impl Datatype {
    /// Opaque bytes.
    pub const RAW: Datatype = Datatype(0);
    /// The value is JSON.
    pub const JSON: u8 = 0x01;
    /// The value is snappy-compressed.
    pub const SNAPPY: u8 = 0x02;
    /// The value carries extended attributes.
    pub const XATTR: u8 = 0x04;
    /// Every bit that has a meaning.
    pub const ALL: u8 = Self::JSON | Self::SNAPPY | Self::XATTR;

    /// True when `bit` is set.
    #[must_use]
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit == bit
    }

    /// True when no unknown bit is set.
    #[must_use]
    pub fn is_valid(self) -> bool {
        self.0 & !Self::ALL == 0
    }
}

/// Why a document is a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeleteSource {
    /// A client deleted it.
    Explicit,
    /// It expired.
    Ttl,
}

impl DeleteSource {
    /// The one-byte form both on-disk formats store for a document's
    /// deletion state: 0 live, 1 deleted by a client, 2 expired.
    ///
    /// ```
    /// use kvstore_core::DeleteSource;
    /// for d in [None, Some(DeleteSource::Explicit), Some(DeleteSource::Ttl)] {
    ///     assert_eq!(DeleteSource::from_byte(DeleteSource::to_byte(d)), Some(d));
    /// }
    /// assert_eq!(DeleteSource::from_byte(3), None);
    /// ```
    #[must_use]
    pub fn to_byte(deleted: Option<DeleteSource>) -> u8 {
        match deleted {
            None => 0,
            Some(DeleteSource::Explicit) => 1,
            Some(DeleteSource::Ttl) => 2,
        }
    }

    /// The deletion state stored as `byte`, or `None` for a byte no
    /// format writes (the caller reports it as corruption).
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Option<DeleteSource>> {
        match byte {
            0 => Some(None),
            1 => Some(Some(DeleteSource::Explicit)),
            2 => Some(Some(DeleteSource::Ttl)),
            _ => None,
        }
    }
}

/// Everything about a document except its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocMeta {
    /// The CAS of this version.
    pub cas: Cas,
    /// How many times the document has changed.
    pub rev_seqno: RevSeqno,
    /// Its by-seqno position; assigned by the caller.
    pub seqno: Seqno,
    /// Client flags, opaque to the store.
    pub flags: u32,
    /// For a live document: absolute expiry time in seconds since the Unix
    /// epoch, 0 for never. For a tombstone: the time it was deleted, which is
    /// what tombstone purging compares against (as upstream does).
    pub expiry: u32,
    /// The datatype bits of the value.
    pub datatype: Datatype,
    /// `Some` when this version is a tombstone.
    pub deleted: Option<DeleteSource>,
}

/// A document as the store keeps it. A tombstone is a document with
/// `meta.deleted` set; it may still carry a value (for example xattrs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The key, with its collection prefix.
    pub key: DiskKey,
    /// The metadata.
    pub meta: DocMeta,
    /// The value bytes (empty when values were not asked for).
    pub value: Bytes,
}

impl Document {
    /// A live document.
    pub fn new(key: DiskKey, seqno: Seqno, value: impl Into<Bytes>) -> Self {
        Document {
            key,
            meta: DocMeta {
                seqno,
                rev_seqno: RevSeqno(1),
                ..DocMeta::default()
            },
            value: value.into(),
        }
    }

    /// An explicit tombstone deleted at `delete_time` (seconds since the
    /// epoch).
    #[must_use]
    pub fn tombstone(key: DiskKey, seqno: Seqno, delete_time: u32) -> Self {
        Document {
            key,
            meta: DocMeta {
                seqno,
                rev_seqno: RevSeqno(1),
                expiry: delete_time,
                deleted: Some(DeleteSource::Explicit),
                ..DocMeta::default()
            },
            value: Bytes::new(),
        }
    }

    /// True for a tombstone.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.meta.deleted.is_some()
    }

    /// The bytes this document accounts for in size statistics.
    #[must_use]
    pub fn body_size(&self) -> u64 {
        (self.key.len() + self.value.len()) as u64
    }
}

/// A change to a local document, committed atomically with the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOp {
    /// Create or replace.
    Set {
        /// The document name, for example `_local/vbstate`.
        name: String,
        /// Its value.
        value: Bytes,
    },
    /// Remove (a no-op when absent).
    Delete {
        /// The document name.
        name: String,
    },
}

impl LocalOp {
    /// The name this operation touches.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            LocalOp::Set { name, .. } | LocalOp::Delete { name } => name,
        }
    }
}

/// The longest local document name, in bytes.
pub const MAX_LOCAL_NAME_LEN: usize = 512;

/// The name under which a store keeps the vbucket state.
pub const VBSTATE_LOCAL_NAME: &str = "_local/vbstate";

/// The state of a vbucket in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VbState {
    /// Serves reads and writes.
    Active,
    /// Receives a replication stream.
    Replica,
    /// Being moved in; not yet serving.
    Pending,
    /// Holds data but serves nothing.
    #[default]
    Dead,
}

/// One failover-log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEntry {
    /// The branch uuid.
    pub uuid: u64,
    /// The seqno the branch starts at.
    pub seqno: Seqno,
}

/// The persisted state of one vbucket.
///
/// The caller owns every field except `high_seqno` and `purge_seqno`, which
/// the store maintains itself: values passed in a commit are replaced by the
/// store's own when the state is read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VbucketState {
    /// Active, replica, pending or dead.
    pub state: VbState,
    /// The highest seqno committed.
    pub high_seqno: Seqno,
    /// The highest seqno purged by compaction.
    pub purge_seqno: Seqno,
    /// The highest seqno of a deletion.
    pub max_deleted_seqno: Seqno,
    /// Start of the last snapshot received.
    pub snapshot_start: Seqno,
    /// End of the last snapshot received.
    pub snapshot_end: Seqno,
    /// The largest CAS handed out.
    pub max_cas: Cas,
    /// The failover log, newest first.
    #[serde(default)]
    pub failover: Vec<FailoverEntry>,
}

impl VbucketState {
    /// Serialises to the bytes stored in the `_local/vbstate` document.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        // Serialising plain integers, strings and vectors to JSON cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses the bytes of a `_local/vbstate` document.
    pub fn decode(raw: &[u8]) -> StoreResult<Self> {
        serde_json::from_slice(raw).map_err(|e| StoreError::BadLocalDoc {
            name: VBSTATE_LOCAL_NAME.to_owned(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbstate_roundtrip() {
        let s = VbucketState {
            state: VbState::Active,
            high_seqno: Seqno(10),
            max_cas: Cas(99),
            failover: vec![FailoverEntry {
                uuid: 7,
                seqno: Seqno(0),
            }],
            ..Default::default()
        };
        let raw = s.encode();
        assert_eq!(VbucketState::decode(&raw).unwrap(), s);
        assert!(String::from_utf8_lossy(&raw).contains("\"active\""));
    }

    #[test]
    fn bad_vbstate_is_typed_error() {
        let err = VbucketState::decode(b"{not json").unwrap_err();
        assert!(matches!(err, StoreError::BadLocalDoc { .. }), "{err}");
    }

    #[test]
    fn datatype_bits() {
        assert!(Datatype(Datatype::JSON | Datatype::XATTR).has(Datatype::XATTR));
        assert!(!Datatype(Datatype::JSON).has(Datatype::SNAPPY));
        assert!(!Datatype(0x80).is_valid());
    }
}
