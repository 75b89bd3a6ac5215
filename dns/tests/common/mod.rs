//! Set-up shared by the DNS tests: a store with Consul's schema and its
//! catalog.

use corro_catalog::Catalog;
use corro_store::{Store, StoreOptions};

/// A fresh store (in a temporary directory kept alive by the caller) with
/// the packaged Consul schema, and the catalog over it.
pub(crate) fn open() -> (tempfile::TempDir, Store, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state.db"), StoreOptions::default()).unwrap();
    store
        .apply_schema_paths(&[
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/schema/consul.sql")
        ])
        .unwrap();
    let catalog = Catalog::open(&store, None).unwrap();
    (dir, store, catalog)
}
