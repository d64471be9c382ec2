//! The open connections, by peer, so one host cannot hold every slot (Hardening III).
//!
//! - **Per-peer cap** (`MAX_CONNECTIONS_PER_IP`): a socket peer (IPv6: per network of
//!   `IPV6_PREFIX_LENGTH`) that is not a trusted proxy holds at most this many connections. A
//!   connection beyond it closes that peer's oldest idle keep-alive connection, or, when none
//!   of them is idle, is itself closed at accept.
//! - **Overload shedding**: above 75% of `MAX_CONNECTIONS`, idle keep-alive connections are
//!   closed oldest first (as Envoy's overload manager and nginx under `worker_connections`
//!   pressure do), so a slot is always free for a new client, whoever holds the rest.
//!
//! "Idle" is a connection that has served a request and has none in flight or arriving; it is
//! closed gracefully (hyper closes an idle HTTP/1 connection at once and sends HTTP/2 GOAWAY),
//! so a request that slips in meanwhile is still answered. Trusted proxies carry many clients:
//! they are exempt from the per-peer cap, not from shedding.
//!
//! One mutex guards the registry; it is taken at accept and when a connection ends, never on a
//! request.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use ipnet::IpNet;

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
    /// Peers exempt from the per-peer cap.
    pub trusted: Vec<IpNet>,
    /// IPv6 peers are counted per network of this length.
    pub v6_prefix: u8,
}

impl ConnectionLimits {
    /// Above this many open connections, idle ones are shed: 75% of `MAX_CONNECTIONS`.
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
    /// (`None`: close the socket at once).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, activity: &Arc<Activity>) -> Option<Registered> {
        let peer = client_network(ip, self.limits.v6_prefix);
        let exempt = self.limits.trusted.iter().any(|net| net.contains(&ip));
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
            let shed = oldest_idle(inner.by_peer.values_mut().flatten(), excess);
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

    /// No slot is free: closes the oldest idle connection, if any, so one frees soon.
    pub fn make_room(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(conn) = oldest_idle(inner.by_peer.values_mut().flatten(), 1).pop() {
            close(conn, &mut inner.closing);
            metrics::counter!("connections_shed_total", "reason" => "overload").increment(1);
        }
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

fn close(conn: &mut Conn, closing: &mut usize) {
    conn.activity.close();
    conn.closing = true;
    *closing += 1;
}

#[allow(clippy::cast_precision_loss)] // a count of connections
fn gauge(count: usize) -> f64 {
    count as f64
}
