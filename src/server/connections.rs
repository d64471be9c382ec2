//! The open connections, by peer, so neither one host nor a few can hold every slot.
//!
//! - **Per-peer cap** (`MAX_CONNECTIONS_PER_IP`): a socket peer (IPv6: per network of
//!   `IPV6_PREFIX_LENGTH`) that is not a trusted proxy holds at most this many connections. A
//!   connection beyond it closes that peer's oldest idle keep-alive connection, or, when none
//!   of them is idle, is itself closed at accept.
//! - **A full server decides at once** (`MAX_CONNECTIONS`): the accept loop never waits for a
//!   slot. A new connection when every slot is live takes the slot of a *sheddable* one, which
//!   is closed at once; when none is sheddable (every connection has a request in flight) the
//!   new one is closed at accept.
//! - **Overload shedding** above 75% of `MAX_CONNECTIONS`: sheddable connections are closed
//!   until the live ones are back at 75%, so a slot is free for a new client, whoever holds the
//!   rest (as Envoy's overload manager and nginx under `worker_connections` pressure do).
//!
//! Sheddable: no request in flight, and either an idle keep-alive connection (it has served a
//! request) or one that has not completed its first request head (at 75%: once it has had
//! [`FIRST_HEAD_GRACE`] to send it, or at once when its peer holds more than this one; at
//! 100%: at once). Victims are taken from the peer holding the most live connections first;
//! within a peer, silent connections past the grace, then idle ones, then newer silent ones,
//! oldest first: pressure falls on whoever causes it, and a service's single keep-alive
//! connection outlives an attacker's hundreds. An idle connection is closed gracefully (hyper
//! closes an idle HTTP/1 connection at once and sends HTTP/2 GOAWAY), a silent one at once.
//! Trusted proxies carry many clients: they are exempt from the per-peer cap, not from
//! shedding. Peers are compared as the per-IP limits compare them (IPv4-mapped IPv6 addresses
//! as IPv4, [`client_network`]).
//!
//! One mutex guards the registry; it is taken at accept and when a connection ends, never on a
//! request.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use ipnet::IpNet;

use crate::client_address::ClientAddresses;

use super::Activity;
use crate::service::lockout::client_network;

/// The limits, from `MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_IP`, `TRUSTED_PROXIES` and
/// `IPV6_PREFIX_LENGTH`.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `MAX_CONNECTIONS`.
    pub max: usize,
    /// `MAX_CONNECTIONS_PER_IP`; 0 = no cap.
    pub per_peer: usize,
    /// Trusted proxies are exempt from the per-peer cap; IPv6 peers are counted per network.
    pub clients: ClientAddresses,
}

/// How long a new connection may take to send its first request head before it counts as
/// sheddable under overload (above 75%; a full server sheds such connections at once).
pub const FIRST_HEAD_GRACE: Duration = Duration::from_secs(1);

/// How hard the registry is looking for connections to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pressure {
    /// Above 75%: idle connections, and silent ones past [`FIRST_HEAD_GRACE`] or of a peer
    /// holding more than one.
    Overload,
    /// Every slot live: idle and silent connections alike.
    Full,
}

impl ConnectionLimits {
    /// Above this many live connections, sheddable ones are shed: 75% of `MAX_CONNECTIONS`.
    fn shed_above(&self) -> usize {
        self.max - self.max / 4
    }
}

/// Every open connection, by peer network.
pub struct Connections {
    limits: ConnectionLimits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_peer: HashMap<IpNet, Vec<Conn>>,
    /// Connections registered and not yet ended.
    open: usize,
    /// Of those, the ones told to close.
    closing: usize,
    next_id: u64,
}

struct Conn {
    id: u64,
    activity: Arc<Activity>,
    closing: bool,
}

/// A registered connection; dropping it (when the connection ends) takes it out.
pub struct Registered {
    connections: Arc<Connections>,
    peer: IpNet,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut inner = self.connections.lock();
        let Some(conns) = inner.by_peer.get_mut(&self.peer) else {
            return;
        };
        let Some(index) = conns.iter().position(|conn| conn.id == self.id) else {
            return;
        };
        let conn = conns.swap_remove(index);
        if conns.is_empty() {
            inner.by_peer.remove(&self.peer);
        }
        inner.open -= 1;
        if conn.closing {
            inner.closing -= 1;
        }
        metrics::gauge!("connections_open").set(gauge(inner.open));
    }
}

impl Connections {
    /// An empty registry.
    #[must_use]
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned registry is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new connection from `ip`, closing what the rules say to close, or refuses it
    /// (`None`: close the socket at once). Never waits.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, activity: &Arc<Activity>) -> Option<Registered> {
        // `::ffff:a.b.c.d` on a dual-stack listener is the IPv4 peer a.b.c.d, for the trusted
        // list as for the per-peer count.
        let ip = ip.to_canonical();
        let peer = client_network(ip, self.limits.clients.v6_prefix());
        let exempt = self.limits.clients.is_trusted(&ip);
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !exempt && self.limits.per_peer > 0 {
            let held = inner.by_peer.get_mut(&peer).map(Vec::as_mut_slice);
            let held = held.unwrap_or_default();
            if held.iter().filter(|conn| !conn.closing).count() >= self.limits.per_peer {
                let Some(oldest) = oldest_idle(held.iter_mut(), 1).pop() else {
                    metrics::counter!("connections_refused_total", "reason" => "per_ip")
                        .increment(1);
                    return None;
                };
                close(oldest, &mut inner.closing);
                metrics::counter!("connections_shed_total", "reason" => "per_ip").increment(1);
            }
        }
        if inner.open - inner.closing >= self.limits.max {
            let Some(victim) = victims(&mut inner.by_peer, 1, Pressure::Full, None).pop() else {
                // Every connection has a request in flight: nothing to take a slot from.
                metrics::counter!("connections_refused_total", "reason" => "full").increment(1);
                return None;
            };
            close(victim, &mut inner.closing);
            metrics::counter!("connections_shed_total", "reason" => "full").increment(1);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.by_peer.entry(peer).or_default().push(Conn {
            id,
            activity: Arc::clone(activity),
            closing: false,
        });
        inner.open += 1;
        let live = inner.open - inner.closing;
        let excess = live.saturating_sub(self.limits.shed_above());
        if excess > 0 {
            let shed = victims(&mut inner.by_peer, excess, Pressure::Overload, Some(id));
            let count = shed.len();
            for conn in shed {
                close(conn, &mut inner.closing);
            }
            metrics::counter!("connections_shed_total", "reason" => "overload")
                .increment(count as u64);
        }
        metrics::gauge!("connections_open").set(gauge(inner.open));
        Some(Registered {
            connections: Arc::clone(self),
            peer,
            id,
        })
    }

    /// Tells every connection to close gracefully (shutdown).
    pub fn close_all(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for conn in inner.by_peer.values_mut().flatten() {
            if !conn.closing {
                close(conn, &mut inner.closing);
            }
        }
    }
}

/// Up to `n` idle connections not yet closing, oldest idle first.
fn oldest_idle<'a>(conns: impl Iterator<Item = &'a mut Conn>, n: usize) -> Vec<&'a mut Conn> {
    let mut idle: Vec<_> = conns
        .filter(|conn| !conn.closing)
        .filter_map(|conn| conn.activity.idle_since().map(|since| (since, conn)))
        .collect();
    idle.sort_unstable_by_key(|(since, _)| *since);
    idle.into_iter().take(n).map(|(_, conn)| conn).collect()
}

/// Up to `n` sheddable connections under `pressure` but `spare` (see the module's doc), in the
/// order they go: the peer holding the most live connections first; within a peer, silent
/// connections past [`FIRST_HEAD_GRACE`], then idle ones, then newer silent ones; oldest first.
fn victims(
    by_peer: &mut HashMap<IpNet, Vec<Conn>>,
    n: usize,
    pressure: Pressure,
    spare: Option<u64>,
) -> Vec<&mut Conn> {
    let mut candidates: Vec<(usize, u8, tokio::time::Instant, &mut Conn)> = Vec::new();
    for conns in by_peer.values_mut() {
        let live = conns.iter().filter(|conn| !conn.closing).count();
        for conn in conns
            .iter_mut()
            .filter(|conn| !conn.closing && Some(conn.id) != spare)
        {
            let activity = &conn.activity;
            if let Some(since) = activity.idle_since() {
                candidates.push((live, 1, since, conn));
            } else if let Some(opened) = activity.silent_since() {
                // A lone new client gets its grace; a peer opening many gets none.
                let waited = opened.elapsed() >= FIRST_HEAD_GRACE;
                if waited {
                    candidates.push((live, 0, opened, conn));
                } else if pressure == Pressure::Full || live > 1 {
                    candidates.push((live, 2, opened, conn));
                }
            }
        }
    }
    candidates.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    candidates
        .into_iter()
        .take(n)
        .map(|(_, _, _, conn)| conn)
        .collect()
}

fn close(conn: &mut Conn, closing: &mut usize) {
    if conn.activity.silent_since().is_some() {
        // Nothing to finish: a connection that never sent a request head goes at once.
        conn.activity.abort();
    } else {
        conn.activity.close();
    }
    conn.closing = true;
    *closing += 1;
}

#[allow(clippy::cast_precision_loss)] // a count of connections
fn gauge(count: usize) -> f64 {
    count as f64
}
