//! The connection limits that outlive a configuration: client connections in total and per
//! source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::config::Limits;
use crate::metrics::metrics;

/// Admits client connections within `limits.max_connections` (as first configured: a
/// reload cannot resize it) and `limits.max_connections_per_ip` (as currently configured).
#[derive(Debug)]
pub(super) struct Admission {
    /// One permit per open client connection.
    connections: Arc<Semaphore>,
    max_connections: u32,
    /// Open client connections per source address.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    pub(super) fn new(limits: &Limits) -> Admission {
        let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        Admission {
            connections: Arc::new(Semaphore::new(max as usize)),
            max_connections: max,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more client connection, or `None` (logged and counted) at the limit.
    pub(super) fn admit(&self, peer: &impl std::fmt::Display, listener: &str) -> Option<Admitted> {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            let reason = "limits.max_connections reached";
            warn!(event = "refused", policy = "max_connections", peer = %peer, pin = listener, reason);
            metrics().refused("max_connections", reason);
            return None;
        };
        Some(Admitted { _permit: permit })
    }

    /// Client connections open now.
    pub(super) fn open_connections(&self) -> usize {
        self.max_connections as usize - self.connections.available_permits()
    }

    /// Completes once no client connection is open.
    pub(super) async fn all_closed(&self) {
        if let Ok(all) = self.connections.acquire_many(self.max_connections).await {
            drop(all);
        }
    }

    /// A place in the count of `ip`'s connections, or `None` (logged and counted) once it
    /// has `max` open.
    pub(super) fn per_ip(&self, max: usize, ip: IpAddr) -> Option<PerIp<'_>> {
        let mut counts = lock(&self.per_ip);
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            let reason = "limits.max_connections_per_ip reached";
            warn!(
                event = "refused",
                policy = "max_connections_per_ip",
                client = %ip,
                reason,
            );
            metrics().refused("max_connections_per_ip", reason);
            return None;
        }
        *n += 1;
        Some(PerIp {
            admission: self,
            ip,
        })
    }
}

/// One open client connection's place in the total; released on drop.
#[derive(Debug)]
pub(super) struct Admitted {
    _permit: OwnedSemaphorePermit,
}

/// One connection's place in the per-address count; released on drop.
pub(super) struct PerIp<'a> {
    admission: &'a Admission,
    ip: IpAddr,
}

impl Drop for PerIp<'_> {
    fn drop(&mut self) {
        let mut counts = lock(&self.admission.per_ip);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Locks a mutex whose data a panic elsewhere cannot leave half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_in_total_and_per_address() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let admission = Admission::new(&limits);
        let a = admission.admit(&"a", "epm").expect("first");
        let _b = admission.admit(&"b", "epm").expect("second");
        assert!(admission.admit(&"c", "epm").is_none(), "over the total");
        assert_eq!(admission.open_connections(), 2);
        drop(a);
        assert_eq!(admission.open_connections(), 1);

        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = admission.per_ip(1, ip).expect("first from the address");
        assert!(
            admission.per_ip(1, ip).is_none(),
            "over the per-address limit"
        );
        drop(first);
        assert!(admission.per_ip(1, ip).is_some(), "released on drop");
    }
}
