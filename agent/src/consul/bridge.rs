//! The Consul bridge running inside the agent: reads this node's rows from
//! the catalog and writes rounds through the store after the write fence
//! (the store broadcasts them like any local commit).

use std::sync::atomic::Ordering;

use corro_consul_bridge::{ConsulSettings, Settings, Sink, Snapshot, Statement};
use corro_store::Store;

use super::Discovery;
use crate::cluster::Cluster;
use crate::config::ConsulClientConfig;

/// The in-process [`Sink`].
pub(crate) struct InProcess {
    store: Store,
    discovery: Discovery,
    cluster: Cluster,
}

impl InProcess {
    pub(crate) fn new(store: Store, discovery: Discovery, cluster: Cluster) -> Self {
        InProcess {
            store,
            discovery,
            cluster,
        }
    }
}

impl Sink for InProcess {
    async fn current(&self, node: &str) -> Result<(Snapshot, bool), String> {
        let snap = corro_consul_bridge::current_from_index(&self.discovery.catalog.read(), node);
        Ok((snap, self.discovery.bridge_allowed.load(Ordering::Relaxed)))
    }

    async fn write(&self, statements: Vec<Statement>) -> Result<(), String> {
        self.cluster.writes_open().await;
        let store = self.store.clone();
        let catalog = self.discovery.catalog.clone();
        tokio::task::spawn_blocking(move || {
            store.transact(|tx| {
                for (sql, params) in &statements {
                    tx.execute(sql, params)?;
                }
                Ok(())
            })?;
            // The next round compares against the catalog: bring it up to
            // date now rather than write the same rows twice.
            catalog
                .process_pending()
                .map_err(|e| corro_store::StoreError::NotAllowed(e.to_string()))?;
            Ok::<_, corro_store::StoreError>(())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}

/// Bridge settings from `[consul.client]`.
pub(crate) fn settings(c: &ConsulClientConfig, sync_output: bool) -> anyhow::Result<Settings> {
    Ok(Settings {
        consul: ConsulSettings {
            addr: c.addr.clone(),
            token: c.token.clone(),
            timeout: c.timeout,
            max_body_bytes: c.max_body_bytes,
            tls: c
                .tls
                .as_ref()
                .map(|t| corro_consul_bridge::consul::TlsSettings {
                    ca_file: t.ca_file.clone(),
                    cert_file: t.cert_file.clone(),
                    key_file: t.key_file.clone(),
                    server_name: t.server_name.clone(),
                }),
        },
        interval: c.poll_interval,
        sync_output,
    })
}
