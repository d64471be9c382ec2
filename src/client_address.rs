//! The one client-address policy (API.md, "Client IP"): which peers are trusted proxies (their
//! `X-Forwarded-For` is read; their connections are exempt from the per-peer cap), and how wide
//! an IPv6 client's network is for every per-IP count. Built once from the configuration and
//! handed to each part that names or counts clients: the request span, the caller extractor,
//! the per-IP limiter, the connection registry.

use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;

/// `TRUSTED_PROXIES` and `IPV6_PREFIX_LENGTH`.
#[derive(Debug, Clone)]
pub struct ClientAddresses {
    trusted: Arc<[IpNet]>,
    v6_prefix: u8,
}

impl ClientAddresses {
    /// The policy for these proxies and this IPv6 network length.
    #[must_use]
    pub fn new(trusted: Vec<IpNet>, v6_prefix: u8) -> Self {
        Self {
            trusted: Arc::from(trusted),
            v6_prefix,
        }
    }

    /// The trusted proxies' networks.
    #[must_use]
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Whether `ip` is a trusted proxy.
    #[must_use]
    pub fn is_trusted(&self, ip: &IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The length of the network an IPv6 client counts as.
    #[must_use]
    pub fn v6_prefix(&self) -> u8 {
        self.v6_prefix
    }
}
