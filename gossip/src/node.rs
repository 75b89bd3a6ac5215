//! One gossip node: the QUIC endpoint, the SWIM driver's IO, message
//! fan-out and subscriptions (see the crate doc for the semantics).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corro_replication::membership::{Identity, Membership, Output, State};
use corro_replication::swim::{SwimHandle, SwimIo};
use parking_lot::Mutex;
use rand::seq::IteratorRandom;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, watch};

use crate::wire::{Frame, MAX_FRAME_BYTES, VERSION};
use crate::{FORWARD_FANOUT, GossipConfig, GossipError, SEEN_WINDOW};

/// A node's id (random per [`Node::bind`]).
pub type NodeId = corro_store::ActorId;

/// A member of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// A change in membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEvent {
    Joined(Member),
    Suspect(Member),
    Down(Member),
    Left(Member),
}

/// Messages of one kind, decoded as `T`.
pub struct Messages<T> {
    rx: mpsc::Receiver<(NodeId, Bytes)>,
    kind: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Messages<T> {
    /// The next message and the node that broadcast it; `None` once the
    /// node has left. Messages that do not decode as `T` are skipped.
    pub async fn recv(&mut self) -> Option<(NodeId, T)> {
        loop {
            let (from, bytes) = self.rx.recv().await?;
            match postcard::from_bytes(&bytes) {
                Ok(v) => return Some((from, v)),
                Err(e) => {
                    metrics::counter!("corro_gossip_lib_undecodable_total").increment(1);
                    tracing::debug!(kind = %self.kind, error = %e, "dropping a message that does not decode");
                }
            }
        }
    }
}

/// Where one subscription's raw messages go.
type Subscriber = mpsc::Sender<(NodeId, Bytes)>;

/// Addresses remembered from [`Node::join`] for re-announcing.
const MAX_SEEDS: usize = 64;

struct Seen {
    set: HashSet<[u8; 16]>,
    order: VecDeque<[u8; 16]>,
}

impl Seen {
    /// True when `id` is new (and remembers it).
    fn insert(&mut self, id: [u8; 16]) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    me: Identity,
    swim: SwimHandle,
    /// Addresses given to [`Node::join`]: announced to again while alone.
    seeds: Mutex<Vec<SocketAddr>>,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    members: Mutex<BTreeMap<SocketAddr, (Identity, State)>>,
    subs: Mutex<HashMap<String, Vec<Subscriber>>>,
    seen: Mutex<Seen>,
    left: Mutex<HashSet<NodeId>>,
    events: broadcast::Sender<MemberEvent>,
    stop: watch::Sender<bool>,
}

/// A running gossip node (cheap to clone).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// Binds the endpoint and starts the node (alone until [`Node::join`]).
    pub async fn bind(config: GossipConfig) -> Result<Node, GossipError> {
        let mut endpoint =
            quinn::Endpoint::server(config.server, config.addr).map_err(|source| {
                GossipError::Bind {
                    addr: config.addr,
                    source,
                }
            })?;
        endpoint.set_default_client_config(config.client);
        let local = endpoint.local_addr().map_err(|source| GossipError::Bind {
            addr: config.addr,
            source,
        })?;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let me = Identity {
            actor: NodeId::random(),
            addr: local,
            ts,
        };
        let (swim_tx, swim_rx) = corro_replication::swim::queue();
        let inner = Arc::new(Inner {
            endpoint,
            me,
            swim: swim_tx,
            seeds: Mutex::default(),
            conns: Mutex::default(),
            members: Mutex::default(),
            subs: Mutex::default(),
            seen: Mutex::new(Seen {
                set: HashSet::new(),
                order: VecDeque::new(),
            }),
            left: Mutex::default(),
            events: broadcast::channel(1024).0,
            stop: watch::channel(false).0,
        });
        let core = Membership::new(me, rand::random());
        let io = GossipIo {
            inner: inner.clone(),
        };
        tokio::spawn(corro_replication::swim::run(core, swim_rx, io));
        tokio::spawn(accept_task(inner.clone()));
        Ok(Node { inner })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.me.actor
    }

    /// Where this node accepts gossip.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.me.addr
    }

    /// Asks the nodes at `addrs` to let this node join (one reachable
    /// member of a cluster is enough; SWIM spreads the rest). While this
    /// node has no live member it asks them again every two seconds.
    pub fn join(&self, addrs: &[SocketAddr]) {
        let mut seeds = self.inner.seeds.lock();
        for a in addrs {
            self.inner.swim.announce(*a);
            if !seeds.contains(a) && seeds.len() < MAX_SEEDS {
                seeds.push(*a);
            }
        }
    }

    /// Members currently alive or suspect (this node excluded).
    pub fn members(&self) -> Vec<Member> {
        self.inner
            .members
            .lock()
            .values()
            .filter(|(_, s)| *s != State::Down)
            .map(|(id, _)| Member {
                id: id.actor,
                addr: id.addr,
            })
            .collect()
    }

    /// Membership events from now on.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    /// Messages of `kind` from now on, decoded as `T`.
    pub fn subscribe<T: DeserializeOwned>(&self, kind: &str) -> Messages<T> {
        let (tx, rx) = mpsc::channel(4096);
        self.inner
            .subs
            .lock()
            .entry(kind.to_string())
            .or_default()
            .push(tx);
        Messages {
            rx,
            kind: kind.to_string(),
            _t: PhantomData,
        }
    }

    /// Sends `msg` as a message of `kind` to every live member (see the
    /// crate doc); returns at once, the sends go on in the background.
    pub fn broadcast<T: Serialize>(&self, kind: &str, msg: &T) -> Result<(), GossipError> {
        if *self.inner.stop.borrow() {
            return Err(GossipError::Closed);
        }
        let id = *uuid::Uuid::new_v4().as_bytes();
        self.inner.seen.lock().insert(id);
        let frame = Frame::Message {
            version: VERSION,
            id,
            origin: self.inner.me.actor.0,
            kind: kind.to_string(),
            hops: 0,
            payload: postcard::to_stdvec(msg)?,
        };
        let bytes = encode(&frame)?;
        for m in self.members() {
            send_frame(&self.inner, m.addr, bytes.clone());
        }
        metrics::counter!("corro_gossip_lib_messages_sent_total").increment(1);
        Ok(())
    }

    /// Leaves the cluster: tells every member, says the SWIM goodbye, closes
    /// the endpoint.
    pub async fn leave(self) {
        let bytes = encode(&Frame::Leave {
            version: VERSION,
            node: self.inner.me.actor.0,
        });
        if let Ok(bytes) = bytes {
            let sends: Vec<_> = self
                .members()
                .into_iter()
                .map(|m| {
                    let inner = self.inner.clone();
                    let bytes = bytes.clone();
                    tokio::spawn(async move { write_frame(&inner, m.addr, bytes).await })
                })
                .collect();
            for s in sends {
                let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.swim.leave()).await;
        self.close().await;
    }

    /// Stops without a goodbye, as a crash would (for tests of failure
    /// detection).
    #[doc(hidden)]
    pub async fn crash(self) {
        self.close().await;
    }

    async fn close(&self) {
        self.inner.stop.send_replace(true);
        self.inner.swim.stop().await;
        self.inner.subs.lock().clear();
        self.inner.endpoint.close(0u32.into(), b"leaving");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

fn encode(frame: &Frame) -> Result<Bytes, GossipError> {
    let bytes = postcard::to_stdvec(frame)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(GossipError::TooLarge(bytes.len()));
    }
    Ok(bytes.into())
}

async fn connection(inner: &Inner, addr: SocketAddr) -> Option<quinn::Connection> {
    if let Some(c) = inner.conns.lock().get(&addr)
        && c.close_reason().is_none()
    {
        return Some(c.clone());
    }
    let conn = inner.endpoint.connect(addr, "gossip").ok()?;
    let conn = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .ok()?
        .ok()?;
    inner.conns.lock().insert(addr, conn.clone());
    Some(conn)
}

/// Writes one frame on a new uni stream to `addr`.
async fn write_frame(inner: &Inner, addr: SocketAddr, bytes: Bytes) -> Option<()> {
    let conn = connection(inner, addr).await?;
    let mut s = conn.open_uni().await.ok()?;
    s.write_all(&(bytes.len() as u32).to_be_bytes())
        .await
        .ok()?;
    s.write_all(&bytes).await.ok()?;
    s.finish().ok()?;
    let _ = s.stopped().await;
    Some(())
}

fn send_frame(inner: &Arc<Inner>, addr: SocketAddr, bytes: Bytes) {
    let inner = inner.clone();
    tokio::spawn(async move {
        if write_frame(&inner, addr, bytes).await.is_none() {
            metrics::counter!("corro_gossip_lib_sends_failed_total").increment(1);
        }
    });
}

fn send_datagram(inner: &Arc<Inner>, addr: SocketAddr, packet: Bytes) {
    let inner = inner.clone();
    tokio::spawn(async move {
        if let Some(conn) = connection(&inner, addr).await {
            let mut b = Vec::with_capacity(packet.len() + 1);
            b.push(VERSION);
            b.extend_from_slice(&packet);
            let _ = conn.send_datagram(b.into());
        }
    });
}

fn member_of(id: &Identity) -> Member {
    Member {
        id: id.actor,
        addr: id.addr,
    }
}

/// The library's IO for the shared SWIM driver: datagrams prefixed with
/// the library's version byte, the member list kept for [`Node::members`],
/// transitions reported as [`MemberEvent`]s.
struct GossipIo {
    inner: Arc<Inner>,
}

impl SwimIo for GossipIo {
    fn send(&mut self, to: SocketAddr, packet: Bytes) {
        send_datagram(&self.inner, to, packet);
    }

    fn step(&mut self, members: Vec<(Identity, State)>, events: Vec<Output>) {
        let inner = &self.inner;
        // The member list first, so an event never arrives before the
        // list it describes. Suspicion is a state, not a notification:
        // report transitions.
        let now: BTreeMap<SocketAddr, (Identity, State)> = members
            .into_iter()
            .filter(|(id, _)| id.addr != inner.me.addr)
            .map(|(id, s)| (id.addr, (id, s)))
            .collect();
        let suspects: Vec<Member> = {
            let before = inner.members.lock();
            now.iter()
                .filter(|(addr, (_, s))| {
                    *s == State::Suspect
                        && before.get(*addr).map(|(_, s)| *s) != Some(State::Suspect)
                })
                .map(|(_, (id, _))| member_of(id))
                .collect()
        };
        *inner.members.lock() = now;
        for m in suspects {
            let _ = inner.events.send(MemberEvent::Suspect(m));
        }
        for o in events {
            match o {
                Output::Up(id) => {
                    let _ = inner.events.send(MemberEvent::Joined(member_of(&id)));
                }
                Output::Down(id) => {
                    inner.conns.lock().remove(&id.addr);
                    if !inner.left.lock().contains(&id.actor) {
                        let _ = inner.events.send(MemberEvent::Down(member_of(&id)));
                    }
                }
                Output::Renamed { old, new } => {
                    inner.conns.lock().remove(&old.addr);
                    let _ = inner.events.send(MemberEvent::Joined(member_of(&new)));
                }
                Output::Rejoined(_) | Output::Send(..) | Output::Schedule(..) => {}
            }
        }
    }

    fn alone(&mut self) {
        for a in self.inner.seeds.lock().iter() {
            self.inner.swim.announce(*a);
        }
    }
}

async fn accept_task(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        let incoming = tokio::select! {
            _ = stop.changed() => break,
            i = inner.endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            loop {
                tokio::select! {
                    d = conn.read_datagram() => {
                        let Ok(d) = d else { break };
                        if d.first() == Some(&VERSION) {
                            inner.swim.received(d.slice(1..));
                        }
                    }
                    u = conn.accept_uni() => {
                        let Ok(mut recv) = u else { break };
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            if let Some(frame) = read_frame(&mut recv).await {
                                handle(&inner, frame);
                            }
                        });
                    }
                }
            }
        });
    }
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        metrics::counter!("corro_gossip_lib_frames_refused_total").increment(1);
        return None;
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.ok()?;
    match postcard::from_bytes(&buf) {
        Ok(f) => Some(f),
        Err(_) => {
            metrics::counter!("corro_gossip_lib_frames_refused_total").increment(1);
            None
        }
    }
}

fn handle(inner: &Arc<Inner>, frame: Frame) {
    match frame {
        Frame::Message {
            version,
            id,
            origin,
            kind,
            hops,
            payload,
        } => {
            if version != VERSION || origin == inner.me.actor.0 || !inner.seen.lock().insert(id) {
                return;
            }
            let payload = Bytes::from(payload);
            {
                let mut subs = inner.subs.lock();
                if let Some(list) = subs.get_mut(&kind) {
                    list.retain(|tx| {
                        match tx.try_send((corro_store::ActorId(origin), payload.clone())) {
                            Ok(()) => true,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                metrics::counter!("corro_gossip_lib_dropped_total").increment(1);
                                true
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => false,
                        }
                    });
                }
            }
            metrics::counter!("corro_gossip_lib_messages_received_total").increment(1);
            if hops == 0 {
                let forward = Frame::Message {
                    version,
                    id,
                    origin,
                    kind,
                    hops: 1,
                    payload: payload.to_vec(),
                };
                if let Ok(bytes) = encode(&forward) {
                    let targets: Vec<SocketAddr> = inner
                        .members
                        .lock()
                        .values()
                        .filter(|(m, s)| *s != State::Down && m.actor.0 != origin)
                        .map(|(m, _)| m.addr)
                        .choose_multiple(&mut rand::rng(), FORWARD_FANOUT);
                    for t in targets {
                        send_frame(inner, t, bytes.clone());
                    }
                }
            }
        }
        Frame::Leave { version, node } => {
            if version != VERSION {
                return;
            }
            let node = corro_store::ActorId(node);
            let member = inner
                .members
                .lock()
                .values()
                .find(|(id, _)| id.actor == node)
                .map(|(id, _)| member_of(id));
            if let Some(m) = member
                && inner.left.lock().insert(node)
            {
                let _ = inner.events.send(MemberEvent::Left(m));
            }
        }
    }
}
