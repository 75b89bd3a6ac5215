//! The HTTP listener loop for the API (and the Consul-only listener), with
//! the limits every local process is subject to.
//!
//! - **Connections per client** (by source address) and in total are
//!   capped (`api.max_conns_per_client`, `api.max_conns`). A connection
//!   over the cap is answered `429 Too Many Requests` with a body naming
//!   the limit, then closed: Consul closes such connections silently, which
//!   Vault, Prometheus and Nomad report as opaque EOF errors and retry at
//!   once.
//! - **Request heads**: a head (request line and headers) must arrive
//!   whole within `api.header_timeout_secs`, which also bounds how long an
//!   idle keep-alive connection stays open; half-open and slow-loris
//!   connections therefore go away on their own. Heads are at most
//!   [`MAX_HEAD_BYTES`] with at most [`MAX_HEADERS`] headers (431 beyond),
//!   and the request target's path and query are checked before routing
//!   (414 beyond).
//! - **Stalled readers**: a connection whose response cannot be written for
//!   [`WRITE_STALL`] (the client stopped reading) is closed, so a client
//!   cannot pin a connection and its response in memory forever.
//!
//! Every refusal is counted (`corro_api_connections_refused_total{reason}`)
//! and the open connections are a gauge (`corro_api_connections`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Largest request head (request line and headers), in bytes.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one request.
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest request path, in bytes.
pub(crate) const MAX_PATH_BYTES: usize = 2048;
/// Longest query string, in bytes.
pub(crate) const MAX_QUERY_BYTES: usize = 16 * 1024;
/// A response nobody reads for this long closes its connection.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(60);

/// The listeners' limits (from `[api]`).
#[derive(Debug, Clone)]
pub(crate) struct ServeLimits {
    pub max_conns_per_client: usize,
    pub max_conns: usize,
    pub header_timeout: Duration,
}

/// Limits and open-connection counts shared by every listener that serves
/// with them (the API and the Consul listener count together, so a client
/// cannot double its share by using both).
#[derive(Clone)]
pub(crate) struct Connections {
    limits: ServeLimits,
    counts: Arc<parking_lot::Mutex<Counts>>,
}

impl Connections {
    pub(crate) fn new(limits: ServeLimits) -> Connections {
        Connections {
            limits,
            counts: Arc::default(),
        }
    }
}

/// Open connections by client address, and in total.
#[derive(Default)]
struct Counts {
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// One admitted connection: released when dropped.
struct Slot {
    counts: Arc<parking_lot::Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        c.total -= 1;
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
        metrics::gauge!("corro_api_connections").set(c.total as f64);
    }
}

/// Why a connection was not admitted.
enum Refused {
    PerClient,
    Total,
}

fn admit(
    counts: &Arc<parking_lot::Mutex<Counts>>,
    limits: &ServeLimits,
    ip: IpAddr,
) -> Result<Slot, Refused> {
    let mut c = counts.lock();
    if c.total >= limits.max_conns {
        return Err(Refused::Total);
    }
    let n = c.by_ip.entry(ip).or_default();
    if *n >= limits.max_conns_per_client {
        return Err(Refused::PerClient);
    }
    *n += 1;
    c.total += 1;
    metrics::gauge!("corro_api_connections").set(c.total as f64);
    Ok(Slot {
        counts: counts.clone(),
        ip,
    })
}

/// Answers 429 on a connection that was not admitted, then closes it.
async fn refuse(mut stream: TcpStream, why: Refused, limits: ServeLimits, peer: SocketAddr) {
    let (reason, text) = match why {
        Refused::PerClient => (
            "per_client",
            format!(
                "too many connections from {} (api.max_conns_per_client = {})\n",
                peer.ip(),
                limits.max_conns_per_client
            ),
        ),
        Refused::Total => (
            "total",
            format!(
                "too many connections to this agent (api.max_conns = {})\n",
                limits.max_conns
            ),
        ),
    };
    metrics::counter!("corro_api_connections_refused_total", "reason" => reason).increment(1);
    tracing::debug!(client = %peer, reason, "api: connection refused with 429");
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{text}",
        text.len()
    );
    // Write, stop sending, then read whatever the client sent until it
    // closes (at most 2 s): closing with its request unread would reset the
    // connection, and the client could lose the 429 before reading it.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(head.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The 414 for a request target over the path or query limit, naming the
/// limit; `None` when the target is within both.
fn target_too_long(uri: &axum::http::Uri) -> Option<Response> {
    let path = uri.path().len();
    let query = uri.query().map_or(0, str::len);
    if path > MAX_PATH_BYTES {
        return Some(super::error(
            StatusCode::URI_TOO_LONG,
            format!("the request path is {path} bytes, over the {MAX_PATH_BYTES} byte limit"),
        ));
    }
    if query > MAX_QUERY_BYTES {
        return Some(super::error(
            StatusCode::URI_TOO_LONG,
            format!("the query string is {query} bytes, over the {MAX_QUERY_BYTES} byte limit"),
        ));
    }
    None
}

/// A stream that records since when a write has been waiting for the
/// client to read (0: not waiting), in ms since `epoch`.
struct Watched<S> {
    inner: S,
    epoch: Instant,
    blocked_since: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    fn note<T>(&self, p: &Poll<T>) {
        match p {
            Poll::Pending => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                let _ = self.blocked_since.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => self.blocked_since.store(0, Ordering::Relaxed),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&p);
        p
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&p);
        p
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&p);
        p
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Pending connections the kernel queues before the agent accepts them
/// (capped by `net.core.somaxconn`): a host's clients reconnecting at
/// once after a restart must not have their handshakes dropped.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `stop`, then lets in-flight requests
/// finish (at most 10 s more).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shared: Connections,
    stop: CancellationToken,
) {
    let Connections { limits, counts } = shared;
    let connections = tokio_util::task::TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                metrics::counter!("corro_api_connections_refused_total", "reason" => "accept_error")
                    .increment(1);
                tracing::warn!(error = %e, "api: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = match admit(&counts, &limits, peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                connections.spawn(refuse(stream, why, limits.clone(), peer));
                continue;
            }
        };
        let (builder, app, stop) = (builder.clone(), app.clone(), stop.clone());
        connections.spawn(async move {
            let _slot = slot;
            let blocked_since = Arc::new(AtomicU64::new(0));
            let epoch = Instant::now();
            let io = hyper_util::rt::TokioIo::new(Watched {
                inner: stream,
                epoch,
                blocked_since: blocked_since.clone(),
            });
            // Request targets are checked here, before routing.
            let service = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        if let Some(refused) = target_too_long(req.uri()) {
                            return Ok::<_, std::convert::Infallible>(refused);
                        }
                        app.oneshot(req.map(axum::body::Body::new)).await
                    }
                },
            );
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let mut check = tokio::time::interval(WRITE_STALL / 4);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stalled = || {
                let since = blocked_since.load(Ordering::Relaxed);
                since > 0
                    && epoch.elapsed().as_millis() as u64 + 1 - since
                        > WRITE_STALL.as_millis() as u64
            };
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(client = %peer, error = %e, "api: connection ended with an error");
                        }
                        return;
                    }
                    _ = check.tick() => {
                        if stalled() {
                            metrics::counter!("corro_api_connections_refused_total", "reason" => "write_stall").increment(1);
                            tracing::debug!(client = %peer, "api: the client stopped reading its response; closing");
                            return;
                        }
                    }
                    _ = stop.cancelled() => break,
                }
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_client_and_in_total_and_released() {
        let counts: Arc<parking_lot::Mutex<Counts>> = Arc::default();
        let limits = ServeLimits {
            max_conns_per_client: 2,
            max_conns: 3,
            header_timeout: Duration::from_secs(1),
        };
        let a = IpAddr::from([127, 0, 0, 1]);
        let b: IpAddr = IpAddr::from([127, 0, 0, 2]);
        let s1 = admit(&counts, &limits, a).ok();
        let s2 = admit(&counts, &limits, a).ok();
        assert!(s1.is_some() && s2.is_some());
        assert!(matches!(
            admit(&counts, &limits, a),
            Err(Refused::PerClient)
        ));
        let s3 = admit(&counts, &limits, b).ok();
        assert!(s3.is_some());
        assert!(matches!(admit(&counts, &limits, b), Err(Refused::Total)));
        drop(s1);
        assert!(admit(&counts, &limits, a).is_ok());
        drop((s2, s3));
        assert!(counts.lock().by_ip.is_empty());
        assert_eq!(counts.lock().total, 0);
    }
}
