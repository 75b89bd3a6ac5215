//! The QUIC side: the endpoint (plaintext, TLS or mutual TLS, idle timeout,
//! MTU), the accept loop, and each incoming connection dispatched by kind:
//! SWIM datagrams, broadcast uni streams, sync bi streams.

use super::*;

pub(super) async fn serve_connection(
    inner: Arc<Inner>,
    incoming: quinn::Incoming,
) -> anyhow::Result<()> {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("corro_gossip_connections_refused_total").increment(1);
            tracing::warn!(peer = %remote, error = %e, "refused a peer connection");
            return Ok(());
        }
    };
    inner.peers.seen(remote);
    loop {
        tokio::select! {
            datagram = conn.read_datagram() => {
                swim::received(&inner, remote, datagram?);
            }
            uni = conn.accept_uni() => {
                let mut recv = uni?;
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = receive_changes(&inner, &mut recv).await {
                        if disk_full(&e) {
                            // Logged once by the store; sync fetches it later.
                            metrics::counter!("corro_store_writes_refused_total", "reason" => "disk_full").increment(1);
                            tracing::debug!(error = %e, "a broadcast was not applied: the disk is full");
                        } else {
                            metrics::counter!("corro_gossip_frames_refused_total").increment(1);
                            tracing::warn!(error = %e, "dropping a broadcast from a peer");
                        }
                    }
                });
            }
            bi = conn.accept_bi() => {
                let (send, recv) = bi?;
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond_sync(&inner, remote, send, recv).await {
                        if disk_full(&e) {
                            metrics::counter!("corro_store_writes_refused_total", "reason" => "disk_full").increment(1);
                            tracing::debug!(error = %e, "a peer's sync round was not applied: the disk is full");
                        } else {
                            metrics::counter!("corro_gossip_frames_refused_total").increment(1);
                            tracing::warn!(error = %e, "sync round from a peer failed");
                        }
                    }
                });
            }
        }
    }
}

/// Bytes of queued outgoing datagrams per connection (quinn's default,
/// set explicitly so shutdown can tell when the queue is empty).
pub(super) const DATAGRAM_SEND_BUFFER: usize = 1024 * 1024;

/// Binds the gossip endpoint as `config` says.
pub(super) fn endpoint(config: &GossipConfig) -> anyhow::Result<quinn::Endpoint> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(config.idle_timeout_secs.max(1)))
            .context("gossip.idle_timeout_secs")?,
    ));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    if let Some(mtu) = config.max_mtu {
        let mut mtu_discovery = quinn::MtuDiscoveryConfig::default();
        mtu_discovery.upper_bound(mtu);
        transport.mtu_discovery_config(Some(mtu_discovery));
        transport.initial_mtu(mtu.min(1200));
    }
    if config.disable_gso {
        transport.enable_segmentation_offload(false);
    }
    let transport = Arc::new(transport);
    let (mut server, mut client) = match (&config.tls, config.plaintext) {
        (Some(tls), false) => (
            crate::tls::server_config(tls)?,
            crate::tls::client_config(tls)?,
        ),
        _ => (
            quinn_plaintext::server_config(),
            quinn_plaintext::client_config(),
        ),
    };
    server.transport_config(transport.clone());
    let mut endpoint = quinn::Endpoint::server(server, config.addr)
        .with_context(|| format!("binding the gossip endpoint on udp/{}", config.addr))?;
    client.transport_config(transport);
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Accepts peer connections until shutdown.
pub(super) fn spawn_accept(inner: &Arc<Inner>, stop: CancellationToken) {
    let accept = inner.clone();
    crate::tasks::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                incoming = accept.endpoint.accept() => match incoming {
                    Some(incoming) => {
                        let inner = accept.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_connection(inner, incoming).await {
                                tracing::debug!(error = %e, "peer connection ended");
                            }
                        });
                    }
                    None => break,
                }
            }
        }
    });
}

/// Whether `e` comes from the store refusing writes on a full disk.
pub(super) fn disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<corro_store::StoreError>()
            .is_some_and(corro_store::StoreError::is_disk_full)
    }) || e.to_string().contains("the disk is full")
}
