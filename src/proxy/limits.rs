//! The connection limits that outlive a configuration: client connections in total and per
//! source address, and the log of their refusals, at most once a minute per address.
//!
//! An IPv6 client counts per /64, not per address: one client owns a whole /64 (SLAAC
//! gives every host one, privacy addresses change within it, RFC 8981), so counting its
//! addresses one by one would let it open the limit 2^64 times over, and fill the refusal
//! log with addresses of its own. An IPv4 address, and an IPv4-mapped IPv6 one (an IPv4
//! client of a dual-stack `[::]` listener), counts on its own.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::warn;

use crate::config::Limits;
use crate::metrics::metrics;

/// What the per-address limit counts as one client: an IPv4 address (IPv4-mapped IPv6
/// included), or an IPv6 /64. Printed as the address, or as the prefix:
/// `2001:db8:1:2::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Source(IpAddr);

impl Source {
    /// The source `ip` counts under.
    pub(super) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Source(v4),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Admits client connections within `limits.max_connections` (as first configured: a
/// reload cannot resize it) and `limits.max_connections_per_ip` (as currently configured).
#[derive(Debug)]
pub(super) struct Admission {
    /// One permit per open client connection.
    connections: Arc<Semaphore>,
    max_connections: u32,
    /// Open client connections per source address (IPv6: per /64).
    per_ip: Mutex<HashMap<Source, usize>>,
    /// When each address's refusals were last logged.
    refusals: Mutex<RefusalLog>,
}

impl Admission {
    pub(super) fn new(limits: &Limits) -> Admission {
        let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        metrics().max_connections.set(i64::from(max));
        Admission {
            connections: Arc::new(Semaphore::new(max as usize)),
            max_connections: max,
            per_ip: Mutex::new(HashMap::new()),
            refusals: Mutex::new(RefusalLog::default()),
        }
    }

    /// A place for one more client connection, or `None` at the limit (counted, and logged
    /// at most once a minute per address).
    pub(super) fn admit(&self, peer: SocketAddr, listener: &str) -> Option<Admitted> {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            let policy = "max_connections";
            let reason = "limits.max_connections reached";
            metrics().refused(policy, reason);
            // Within the address's quiet minute: counted only.
            let n = lock(&self.refusals).note(policy, Source::of(peer.ip()), Instant::now())?;
            if n.untracked {
                warn!(event = "refused", policy, peer = %peer, pin = listener, refused_since_last = n.since, untracked = true, reason);
            } else {
                warn!(event = "refused", policy, peer = %peer, pin = listener, refused_since_last = n.since, reason);
            }
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

    /// A place in the count of the connections of `ip`'s [`Source`], or `None` once it has
    /// `max` open (counted, and logged at most once a minute per source).
    pub(super) fn per_ip(&self, max: usize, ip: IpAddr) -> Option<PerIp<'_>> {
        let source = Source::of(ip);
        let mut counts = lock(&self.per_ip);
        let n = counts.entry(source).or_insert(0);
        if *n >= max {
            drop(counts);
            let policy = "max_connections_per_ip";
            let reason = "limits.max_connections_per_ip reached";
            metrics().refused(policy, reason);
            // Within the address's quiet minute: counted only.
            let n = lock(&self.refusals).note(policy, source, Instant::now())?;
            if n.untracked {
                warn!(event = "refused", policy, client = %source, refused_since_last = n.since, untracked = true, reason);
            } else {
                warn!(event = "refused", policy, client = %source, refused_since_last = n.since, reason);
            }
            return None;
        }
        *n += 1;
        Some(PerIp {
            admission: self,
            source,
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
    source: Source,
}

impl Drop for PerIp<'_> {
    fn drop(&mut self) {
        let mut counts = lock(&self.admission.per_ip);
        if let Some(n) = counts.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// How often refusals of one address under one policy are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How many (policy, address) pairs [`RefusalLog`] tracks at most; beyond, they share one
/// entry.
const TRACKED: usize = 4096;

/// When refusals at accept were last logged, per policy and address, and how many were
/// refused since without a log line: bounded, so that a flood from many addresses cannot
/// grow it.
#[derive(Debug, Default)]
struct RefusalLog {
    tracked: HashMap<(&'static str, Source), Quiet>,
    /// Shared by every pair refused while `tracked` is full of pairs logged within the
    /// minute.
    untracked: Option<Quiet>,
    /// The earliest `logged` in `tracked` when it was last pruned: nothing expires before
    /// a minute after it.
    oldest: Option<Instant>,
}

/// One entry's last log line and what was refused since.
#[derive(Debug, Clone, Copy)]
struct Quiet {
    logged: Instant,
    since: u64,
}

/// A refusal to log now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Log {
    /// Refusals counted but not logged since the previous event for the same entry.
    since: u64,
    /// Whether the entry is the one shared by untracked addresses.
    untracked: bool,
}

impl RefusalLog {
    /// Notes one refusal of `source` under `policy` at `now`: what to log, or `None` when
    /// it is only counted.
    fn note(&mut self, policy: &'static str, source: Source, now: Instant) -> Option<Log> {
        let key = (policy, source);
        if let Some(q) = self.tracked.get_mut(&key) {
            return Self::again(q, now, false);
        }
        if self.tracked.len() >= TRACKED {
            self.prune(now);
        }
        let first = Quiet {
            logged: now,
            since: 0,
        };
        if self.tracked.len() < TRACKED {
            self.tracked.insert(key, first);
            self.oldest.get_or_insert(now);
            return Some(Log {
                since: 0,
                untracked: false,
            });
        }
        match &mut self.untracked {
            Some(q) => Self::again(q, now, true),
            None => {
                self.untracked = Some(first);
                Some(Log {
                    since: 0,
                    untracked: true,
                })
            }
        }
    }

    /// A further refusal for an entry: logged once its minute is over, counted before.
    fn again(q: &mut Quiet, now: Instant, untracked: bool) -> Option<Log> {
        if now.duration_since(q.logged) < LOG_EVERY {
            q.since += 1;
            return None;
        }
        let since = std::mem::take(&mut q.since);
        q.logged = now;
        Some(Log { since, untracked })
    }

    /// Forgets the entries last logged a minute or more ago (what they counted since is in
    /// the metric only), unless none can have expired yet.
    fn prune(&mut self, now: Instant) {
        if self
            .oldest
            .is_some_and(|o| now.duration_since(o) < LOG_EVERY)
        {
            return;
        }
        self.tracked
            .retain(|_, q| now.duration_since(q.logged) < LOG_EVERY);
        self.oldest = self.tracked.values().map(|q| q.logged).min();
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
        let peer: SocketAddr = "192.0.2.9:1234".parse().unwrap();
        let a = admission.admit(peer, "epm").expect("first");
        let _b = admission.admit(peer, "epm").expect("second");
        assert!(admission.admit(peer, "epm").is_none(), "over the total");
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

    #[test]
    fn an_ipv6_client_counts_per_64_and_an_ipv4_mapped_one_as_ipv4() {
        let admission = Admission::new(&Limits::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = admission.per_ip(2, ip("2001:db8:1:2::10")).expect("first");
        let _second = admission.per_ip(2, ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"));
        assert!(
            admission.per_ip(2, ip("2001:db8:1:2:ffff::1")).is_none(),
            "a third address of the same /64 is over the limit"
        );
        assert!(
            admission.per_ip(2, ip("2001:db8:1:3::10")).is_some(),
            "the next /64 is another client"
        );
        drop(first);
        assert!(admission.per_ip(2, ip("2001:db8:1:2::99")).is_some());

        let _v4 = admission.per_ip(1, ip("192.0.2.7")).expect("IPv4");
        assert!(
            admission.per_ip(1, ip("::ffff:192.0.2.7")).is_none(),
            "the same client through a dual-stack listener"
        );
        assert!(admission.per_ip(1, ip("192.0.2.8")).is_some());
        assert!(admission.per_ip(1, ip("::ffff:192.0.2.9")).is_some());
    }

    #[test]
    fn a_source_prints_as_the_ipv4_address_or_the_ipv6_prefix() {
        let shown = |s: &str| Source::of(s.parse().unwrap()).to_string();
        assert_eq!(
            shown("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
            "2001:db8:1:2::/64"
        );
        assert_eq!(shown("fd00:135::2"), "fd00:135::/64");
        assert_eq!(shown("192.0.2.7"), "192.0.2.7");
        assert_eq!(shown("::ffff:192.0.2.7"), "192.0.2.7");
    }

    const PER_IP: &str = "max_connections_per_ip";

    fn logged(since: u64) -> Option<Log> {
        Some(Log {
            since,
            untracked: false,
        })
    }

    #[test]
    fn an_address_is_logged_at_most_once_a_minute_with_what_it_was_refused_since() {
        let mut log = RefusalLog::default();
        let a = Source::of("192.0.2.1".parse().unwrap());
        let b = Source::of("192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(log.note(PER_IP, a, t0), logged(0), "the first at once");
        for s in 1..=3 {
            assert_eq!(log.note(PER_IP, a, t0 + Duration::from_secs(s * 10)), None);
        }
        // Another address, and the same address under another policy, are their own.
        assert_eq!(log.note(PER_IP, b, t0 + Duration::from_secs(1)), logged(0));
        assert_eq!(log.note("max_connections", a, t0), logged(0));
        // A minute after its last event: logged, with the three counted since.
        assert_eq!(log.note(PER_IP, a, t0 + LOG_EVERY), logged(3));
        assert_eq!(log.note(PER_IP, a, t0 + LOG_EVERY), None);
        let later = t0 + 2 * LOG_EVERY + Duration::from_secs(5);
        assert_eq!(log.note(PER_IP, a, later), logged(1));
        assert_eq!(log.note(PER_IP, a, later + LOG_EVERY), logged(0));
    }

    #[test]
    fn a_flood_from_many_addresses_is_bounded_in_memory_and_log_lines() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let ip = |i: u32| Source::of(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        let mut lines = 0;
        let mut shared = Vec::new();
        for i in 0..3 * TRACKED as u32 {
            match log.note(PER_IP, ip(i), t0 + Duration::from_millis(u64::from(i))) {
                Some(Log {
                    untracked: true,
                    since,
                }) => shared.push(since),
                Some(_) => lines += 1,
                None => {}
            }
        }
        assert_eq!(log.tracked.len(), TRACKED);
        // Within the minute: one line per tracked address, one for all the others.
        assert_eq!((lines, shared.len()), (TRACKED, 1));
        // A minute on, the stale entries are forgotten and make room.
        let t1 = t0 + LOG_EVERY + Duration::from_secs(13);
        assert_eq!(log.note(PER_IP, ip(1_000_000), t1), logged(0));
        assert_eq!(log.tracked.len(), 1);
        // Full again: the shared entry's next line counts every untracked refusal since its
        // last one, then it is quiet for a minute.
        for i in 1..TRACKED as u32 {
            assert_eq!(log.note(PER_IP, ip(2_000_000 + i), t1), logged(0));
        }
        let untracked = Some(Log {
            since: 2 * TRACKED as u64 - 1,
            untracked: true,
        });
        assert_eq!(log.note(PER_IP, ip(3_000_000), t1), untracked);
        assert_eq!(log.note(PER_IP, ip(3_000_001), t1), None);
        assert_eq!(log.tracked.len(), TRACKED);
    }
}
