//! The whole conformance suite against `MemStore`.

kvstore_core::conformance_tests!(kvstore_core::testkit::MemFactory::default());
