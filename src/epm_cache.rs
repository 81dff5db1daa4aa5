//! The endpoint-mapper answers rpcpin keeps in answer mode: one lookup at a server per key
//! at a time, however many clients ask, and entries refreshed in the background shortly
//! before they expire, so that a steady load never waits on the server.
//!
//! Generic over what is kept, so that it is tested here with plain values; the endpoint
//! mapper keeps each ept_map query's towers in it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::backend::{Endpoint, LookupEntry};
use crate::config::Limits;
use crate::wire::epm::TowerKey;
use crate::wire::Uuid;

/// What an ept_map asks: its object UUID (nil for a null pointer) and its tower's key.
pub type MapKey = (Uuid, TowerKey);

/// The answers of one configuration's servers, shared by its endpoint-mapper connections.
#[derive(Debug)]
pub struct EpmAnswers {
    /// Each ept_map question's endpoints at the pin's server.
    pub maps: Arc<Cache<MapKey, Vec<Endpoint>>>,
    /// Each server's entries, by server name, for ept_lookup.
    pub lookups: Arc<Cache<String, Vec<LookupEntry>>>,
}

impl EpmAnswers {
    /// Caches keeping answers for `limits.resolve_cache`, refreshed during its last fifth.
    pub fn new(limits: &Limits) -> EpmAnswers {
        let ttl = limits.resolve_cache;
        EpmAnswers {
            maps: Arc::new(Cache::new(ttl, ttl / 5, MAX_MAP_KEYS)),
            lookups: Arc::new(Cache::new(ttl, ttl / 5, MAX_SERVERS)),
        }
    }
}

/// The most ept_map questions kept: the pinned interfaces in their versions, transfer
/// syntaxes and object UUIDs.
const MAX_MAP_KEYS: usize = 1024;
/// The most servers whose entries are kept.
const MAX_SERVERS: usize = 64;

/// The outcome of one lookup at the server: what it answered, or why there is no answer
/// (shared by every client that waited for it).
pub type Outcome<V> = Result<Arc<V>, Arc<anyhow::Error>>;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fresh entry.
    Cache,
    /// A lookup at the server: this client's, or one it waited for.
    Server,
}

/// Answers by key, each looked up at most once at a time and kept for `ttl`.
#[derive(Debug)]
pub struct Cache<K, V> {
    ttl: Duration,
    /// How long before it expires an entry in use is looked up again.
    refresh_ahead: Duration,
    /// At most this many keys are kept; beyond, the oldest entry goes.
    capacity: usize,
    slots: Mutex<HashMap<K, Slot<V>>>,
}

#[derive(Debug)]
struct Slot<V> {
    /// Filled once by the lookup, with the moment the entry's `ttl` starts (when it was
    /// looked up, or when the entry a refresh replaces expires); every client asking
    /// meanwhile waits on it.
    cell: Arc<OnceCell<(Outcome<V>, Instant)>>,
    /// A refresh of this entry is under way.
    refreshing: bool,
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        Slot {
            cell: self.cell.clone(),
            refreshing: self.refreshing,
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Send + Sync + 'static,
{
    /// A cache keeping answers for `ttl`, refreshing an entry in use during the last
    /// `refresh_ahead` of it, and holding at most `capacity` keys.
    pub fn new(ttl: Duration, refresh_ahead: Duration, capacity: usize) -> Cache<K, V> {
        Cache {
            ttl,
            refresh_ahead: refresh_ahead.min(ttl),
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`: the entry when it is fresh (and, when it is about to expire,
    /// a refresh started with `lookup` in the background); otherwise the outcome of a lookup
    /// at the server, this client's own or one already under way. A failed lookup is not
    /// kept: the next client asks again.
    pub async fn get<F, Fut>(self: &Arc<Self>, key: &K, lookup: F) -> (Outcome<V>, Source)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<V>> + Send + 'static,
    {
        let now = Instant::now();
        let slot = {
            let mut slots = self.slots();
            match slots.get_mut(key) {
                Some(slot) => match slot.cell.get() {
                    Some((Ok(value), at)) if now < *at + self.ttl => {
                        if now + self.refresh_ahead >= *at + self.ttl && !slot.refreshing {
                            slot.refreshing = true;
                            self.refresh(key.clone(), lookup, *at + self.ttl);
                        }
                        return (Ok(value.clone()), Source::Cache);
                    }
                    // Expired, or a failure not yet cleared: look up anew.
                    Some(_) => self.fresh_slot(&mut slots, key),
                    // A lookup is under way: wait for it.
                    None => slot.clone(),
                },
                None => self.fresh_slot(&mut slots, key),
            }
        };
        let (outcome, _) = slot
            .cell
            .get_or_init(|| async move {
                (
                    lookup().await.map(Arc::new).map_err(Arc::new),
                    Instant::now(),
                )
            })
            .await;
        if outcome.is_err() {
            self.clear_if(key, &slot.cell);
        }
        (outcome.clone(), Source::Server)
    }

    /// Looks `key` up again in a task of its own, and replaces its entry when the server
    /// answers, the new one living for `ttl` from `expires`, when the old one expires: an
    /// entry in use is then looked up once per `ttl`, however early in its last stretch the
    /// refresh began. On a failure the entry stays until it expires.
    fn refresh<F, Fut>(self: &Arc<Self>, key: K, lookup: F, expires: Instant)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<V>> + Send + 'static,
    {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = lookup().await;
            let mut slots = cache.slots();
            match outcome {
                Ok(value) => {
                    let cell = OnceCell::new_with(Some((Ok(Arc::new(value)), expires)));
                    slots.insert(
                        key,
                        Slot {
                            cell: Arc::new(cell),
                            refreshing: false,
                        },
                    );
                }
                Err(_) => {
                    if let Some(slot) = slots.get_mut(&key) {
                        slot.refreshing = false;
                    }
                }
            }
        });
    }

    /// A new, empty slot for `key`, making room for it.
    fn fresh_slot(&self, slots: &mut HashMap<K, Slot<V>>, key: &K) -> Slot<V> {
        if slots.len() >= self.capacity && !slots.contains_key(key) {
            self.evict(slots);
        }
        let slot = Slot {
            cell: Arc::new(OnceCell::new()),
            refreshing: false,
        };
        slots.insert(key.clone(), slot.clone());
        slot
    }

    /// Drops the expired entries, or when none has expired the oldest one (lookups under
    /// way are kept: their clients wait on them).
    fn evict(&self, slots: &mut HashMap<K, Slot<V>>) {
        let now = Instant::now();
        let before = slots.len();
        slots.retain(|_, s| s.cell.get().is_none_or(|(_, at)| now < *at + self.ttl));
        if slots.len() < before {
            return;
        }
        let oldest = slots
            .iter()
            .filter_map(|(k, s)| s.cell.get().map(|(_, at)| (k.clone(), *at)))
            .min_by_key(|(_, at)| *at);
        if let Some((k, _)) = oldest {
            slots.remove(&k);
        }
    }

    /// Removes `key`'s slot when it is still `cell` (a failed lookup).
    fn clear_if(&self, key: &K, cell: &Arc<OnceCell<(Outcome<V>, Instant)>>) {
        let mut slots = self.slots();
        if slots.get(key).is_some_and(|s| Arc::ptr_eq(&s.cell, cell)) {
            slots.remove(key);
        }
    }

    /// Drops the entries whose key `stale` says no longer holds (their next client looks
    /// them up again); lookups under way are left to finish.
    pub fn forget(&self, stale: impl Fn(&K) -> bool) {
        self.slots()
            .retain(|k, s| s.cell.get().is_none() || !stale(k));
    }

    /// How many keys are kept.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether no key is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<K, Slot<V>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TTL: Duration = Duration::from_secs(30);
    const AHEAD: Duration = Duration::from_secs(5);

    /// A lookup that counts itself, takes `delay`, and answers `answer`.
    fn lookup(
        count: &Arc<AtomicUsize>,
        delay: Duration,
        answer: anyhow::Result<u32>,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<u32>> + Send>> {
        let count = count.clone();
        move || {
            Box::pin(async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                answer
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn clients_asking_at_once_share_one_lookup() {
        let cache = Arc::new(Cache::<u8, u32>::new(TTL, AHEAD, 16));
        let count = Arc::new(AtomicUsize::new(0));
        let gets = (0..8).map(|_| {
            let (cache, count) = (cache.clone(), count.clone());
            tokio::spawn(async move {
                cache
                    .get(&1, lookup(&count, Duration::from_millis(100), Ok(7)))
                    .await
            })
        });
        for get in futures_join(gets).await {
            let (outcome, source) = get;
            assert_eq!((*outcome.unwrap(), source), (7, Source::Server));
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "one lookup for eight clients"
        );
        let (outcome, source) = cache.get(&1, lookup(&count, Duration::ZERO, Ok(8))).await;
        assert_eq!((*outcome.unwrap(), source), (7, Source::Cache));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_in_use_is_refreshed_before_it_expires() {
        let cache = Arc::new(Cache::<u8, u32>::new(TTL, AHEAD, 16));
        let count = Arc::new(AtomicUsize::new(0));
        cache
            .get(&1, lookup(&count, Duration::ZERO, Ok(1)))
            .await
            .0
            .unwrap();
        // Used just before the refresh window: no lookup.
        tokio::time::sleep(TTL - AHEAD - Duration::from_secs(1)).await;
        let (o, s) = cache.get(&1, lookup(&count, Duration::ZERO, Ok(2))).await;
        assert_eq!(
            (*o.unwrap(), s, count.load(Ordering::SeqCst)),
            (1, Source::Cache, 1)
        );
        // Inside it: the old answer now, one refresh in the background however many ask.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..3 {
            let (o, s) = cache
                .get(&1, lookup(&count, Duration::from_secs(1), Ok(2)))
                .await;
            assert_eq!((*o.unwrap(), s), (1, Source::Cache));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2, "one refresh");
        // Past the first answer's expiry the refreshed one serves, from the cache.
        tokio::time::sleep(AHEAD).await;
        let (o, s) = cache.get(&1, lookup(&count, Duration::ZERO, Ok(3))).await;
        assert_eq!(
            (*o.unwrap(), s, count.load(Ordering::SeqCst)),
            (2, Source::Cache, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_load_costs_one_lookup_per_ttl() {
        let cache = Arc::new(Cache::<u8, u32>::new(TTL, AHEAD, 16));
        let count = Arc::new(AtomicUsize::new(0));
        // A client every second for ten TTLs: the first lookup, then one refresh per TTL
        // (at 25 s, 55 s, ... 295 s), none of them waited for.
        for second in 0..300 {
            let (o, s) = cache
                .get(&1, lookup(&count, Duration::from_millis(100), Ok(1)))
                .await;
            assert!(o.is_ok());
            assert_eq!(s == Source::Server, second == 0, "second {second}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(count.load(Ordering::SeqCst), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_reaches_every_waiting_client_and_is_not_kept() {
        let cache = Arc::new(Cache::<u8, u32>::new(TTL, AHEAD, 16));
        let count = Arc::new(AtomicUsize::new(0));
        let gets = (0..4).map(|_| {
            let (cache, count) = (cache.clone(), count.clone());
            let failing = lookup(&count, Duration::from_secs(1), Err(anyhow::anyhow!("down")));
            tokio::spawn(async move { cache.get(&1, failing).await })
        });
        for (outcome, _) in futures_join(gets).await {
            assert_eq!(outcome.unwrap_err().to_string(), "down");
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "the waiting clients did not retry"
        );
        let (o, s) = cache.get(&1, lookup(&count, Duration::ZERO, Ok(5))).await;
        assert_eq!(
            (*o.unwrap(), s, count.load(Ordering::SeqCst)),
            (5, Source::Server, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_away_hands_the_lookup_to_the_next() {
        let cache = Arc::new(Cache::<u8, u32>::new(TTL, AHEAD, 16));
        let count = Arc::new(AtomicUsize::new(0));
        let first = {
            let (cache, count) = (cache.clone(), count.clone());
            tokio::spawn(async move {
                cache
                    .get(&1, lookup(&count, Duration::from_secs(10), Ok(1)))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        first.abort();
        let (o, _) = cache
            .get(&1, lookup(&count, Duration::from_secs(1), Ok(2)))
            .await;
        assert_eq!((*o.unwrap(), count.load(Ordering::SeqCst)), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn at_capacity_expired_entries_go_first_then_the_oldest() {
        let cache = Arc::new(Cache::<u8, u32>::new(TTL, AHEAD, 2));
        let count = Arc::new(AtomicUsize::new(0));
        for k in 0..2 {
            cache
                .get(&k, lookup(&count, Duration::ZERO, Ok(1)))
                .await
                .0
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cache
            .get(&2, lookup(&count, Duration::ZERO, Ok(1)))
            .await
            .0
            .unwrap();
        assert_eq!(cache.len(), 2);
        let (_, s) = cache.get(&0, lookup(&count, Duration::ZERO, Ok(1))).await;
        assert_eq!(s, Source::Server, "the oldest, 0, was evicted");
        let (_, s) = cache.get(&2, lookup(&count, Duration::ZERO, Ok(1))).await;
        assert_eq!(s, Source::Cache);
    }

    /// Awaits every task, in order.
    async fn futures_join<T: Send + 'static>(
        tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for t in tasks.collect::<Vec<_>>() {
            out.push(t.await.unwrap());
        }
        out
    }
}
