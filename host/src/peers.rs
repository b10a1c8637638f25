//! Who is connected: the count of open connections overall and per client address, the caps
//! on both, and which address a request comes from when a trusted reverse proxy forwards it.
//!
//! A connection counts from the moment it is accepted until it closes, whatever it turns out
//! to be (a WebSocket session or one HTTP request), since each holds a file descriptor.
//! Counting per address happens once the request head is read, because only then is the
//! client's address behind a proxy known.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Config, DEFAULT_MAX_CONNECTIONS_PER_IP};

/// The open connections, counted.
#[derive(Debug)]
pub struct Peers {
    open: Arc<AtomicUsize>,
    max_connections: usize,
    /// `None`: the default rule (a cap for other machines, none for loopback).
    max_per_address: Option<usize>,
    trusted_proxies: Vec<IpAddr>,
    /// Std mutex: held to bump or drop one count, never across an `.await`.
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One accepted connection's place in the overall count; dropping it frees the place.
#[derive(Debug)]
pub struct Place {
    open: Arc<AtomicUsize>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's place in its address's count; dropping it frees the place.
#[derive(Debug)]
pub struct AddressPlace {
    address: IpAddr,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut counts = lock(&self.per_address);
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

impl Peers {
    pub fn new(config: &Config) -> Peers {
        Peers {
            open: Arc::new(AtomicUsize::new(0)),
            max_connections: config.max_connections,
            max_per_address: config.max_connections_per_ip,
            trusted_proxies: config.trusted_proxies.clone(),
            per_address: Arc::default(),
        }
    }

    /// A place for a newly accepted connection, or `None` when `--max-connections` are open.
    pub fn admit(&self) -> Option<Place> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max_connections).then_some(open + 1)
            })
            .ok()?;
        Some(Place {
            open: Arc::clone(&self.open),
        })
    }

    /// A place for a connection from `address`, or the cap it is at.
    pub fn admit_address(&self, address: IpAddr) -> Result<AddressPlace, usize> {
        let cap = match self.max_per_address {
            Some(cap) => cap,
            None if address.is_loopback() => usize::MAX,
            None => DEFAULT_MAX_CONNECTIONS_PER_IP,
        };
        let mut counts = lock(&self.per_address);
        let count = counts.entry(address).or_default();
        if *count >= cap {
            if *count == 0 {
                counts.remove(&address);
            }
            return Err(cap);
        }
        *count += 1;
        Ok(AddressPlace {
            address,
            per_address: Arc::clone(&self.per_address),
        })
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the last
    /// address in `X-Forwarded-For` that is not itself a trusted proxy (the proxies append,
    /// so the ones to the left are what the client claimed).
    pub fn client_address(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let Some(forwarded_for) = forwarded_for else {
            return peer;
        };
        forwarded_for
            .rsplit(',')
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .find(|hop| !self.trusted_proxies.contains(hop))
            .unwrap_or(peer)
    }
}

fn lock(
    counts: &Mutex<HashMap<IpAddr, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(max_per_address: Option<usize>, proxies: &[&str]) -> Peers {
        let mut config = Config::with_tasks_dir("tasks");
        config.max_connections = 3;
        config.max_connections_per_ip = max_per_address;
        config.trusted_proxies = proxies.iter().map(|p| p.parse().unwrap()).collect();
        Peers::new(&config)
    }

    #[test]
    fn the_overall_cap_holds_and_places_come_back() {
        let peers = peers(None, &[]);
        let places: Vec<_> = (0..3).map(|_| peers.admit().unwrap()).collect();
        assert!(peers.admit().is_none());
        drop(places);
        assert!(peers.admit().is_some(), "dropped places come back");
    }

    #[test]
    fn loopback_is_exempt_by_default_but_not_from_an_explicit_cap() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let default = peers(None, &[]);
        let held: Vec<_> = (0..300)
            .map(|_| default.admit_address(loopback).unwrap())
            .collect();
        let remote_held: Vec<_> = (0..DEFAULT_MAX_CONNECTIONS_PER_IP)
            .map(|_| default.admit_address(remote).unwrap())
            .collect();
        assert_eq!(
            default.admit_address(remote).unwrap_err(),
            DEFAULT_MAX_CONNECTIONS_PER_IP
        );
        drop((held, remote_held));
        let explicit = peers(Some(2), &[]);
        let _a = explicit.admit_address(loopback).unwrap();
        let _b = explicit.admit_address(loopback).unwrap();
        assert_eq!(explicit.admit_address(loopback).unwrap_err(), 2);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let peers = peers(None, &["10.0.0.1"]);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        let client: IpAddr = "198.51.100.4".parse().unwrap();
        assert_eq!(
            peers.client_address(proxy, Some("1.2.3.4, 198.51.100.4")),
            client,
            "the proxy's own hop is the one to believe, not what the client claimed"
        );
        assert_eq!(
            peers.client_address(stranger, Some("198.51.100.4")),
            stranger
        );
        assert_eq!(peers.client_address(proxy, None), proxy);
    }
}
