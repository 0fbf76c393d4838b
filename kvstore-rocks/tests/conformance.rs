//! The whole kvstore-core conformance suite against the RocksDB backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

kvstore_core::conformance_tests!(common::RocksFactory::default());
