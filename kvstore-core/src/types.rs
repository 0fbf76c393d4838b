//! Small identifier types shared by every crate (DESIGN §3).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident($inner:ty), $fmt:literal) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// A vbucket id, 0 to `vbucket_count - 1`.
    Vbid(u16),
    "vb:{}"
);
id_type!(
    /// A by-sequence number. Seqnos are assigned by the caller and strictly
    /// increase within one vbucket; 0 means "nothing yet".
    Seqno(u64),
    "{}"
);
id_type!(
    /// A compare-and-swap value. 0 means "no CAS check" in requests.
    Cas(u64),
    "{:#x}"
);
id_type!(
    /// The revision sequence number of a document: how many times it changed.
    RevSeqno(u64),
    "{}"
);
id_type!(
    /// The incarnation number of one vbucket's on-disk store. Each
    /// `(Vbid, Revision)` is an isolated store.
    Revision(u64),
    "rev:{}"
);
id_type!(
    /// A collection id. 0 is the default collection, 1 holds system events,
    /// 2 to 7 are reserved and user collections start at 8.
    CollectionId(u32),
    "{:#x}"
);
id_type!(
    /// A scope id. 0 is the `_default` scope.
    ScopeId(u32),
    "{:#x}"
);

impl Seqno {
    /// The seqno that follows this one.
    #[must_use]
    pub fn next(self) -> Seqno {
        Seqno(self.0.saturating_add(1))
    }
}

impl CollectionId {
    /// The `_default` collection.
    pub const DEFAULT: CollectionId = CollectionId(0);
    /// The collection that carries system events.
    pub const SYSTEM: CollectionId = CollectionId(1);
    /// The first id a user collection may have.
    pub const FIRST_USER: u32 = 8;

    /// True for ids 2 to 7, which no collection may use.
    #[must_use]
    pub fn is_reserved(self) -> bool {
        (2..Self::FIRST_USER).contains(&self.0)
    }
}

impl ScopeId {
    /// The `_default` scope.
    pub const DEFAULT: ScopeId = ScopeId(0);
}

impl Revision {
    /// The revision that follows this one.
    #[must_use]
    pub fn next(self) -> Revision {
        Revision(self.0.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_collection_ids() {
        assert!(!CollectionId::DEFAULT.is_reserved());
        assert!(!CollectionId::SYSTEM.is_reserved());
        assert!(CollectionId(2).is_reserved());
        assert!(CollectionId(7).is_reserved());
        assert!(!CollectionId(8).is_reserved());
    }

    #[test]
    fn display_forms() {
        assert_eq!(Vbid(7).to_string(), "vb:7");
        assert_eq!(CollectionId(8).to_string(), "0x8");
        assert_eq!(Revision(3).to_string(), "rev:3");
    }

    #[test]
    fn serde_is_transparent() {
        assert_eq!(serde_json::to_string(&Seqno(42)).unwrap(), "42");
        let v: Vbid = serde_json::from_str("5").unwrap();
        assert_eq!(v, Vbid(5));
    }
}
