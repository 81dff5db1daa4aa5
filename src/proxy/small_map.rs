//! A map for the handful of entries a connection keeps (contexts, outstanding calls):
//! a vector searched in order, which for a few entries beats hashing, and whose first two
//! entries live inline, so that a typical connection allocates nothing for it.

use smallvec::SmallVec;

/// Keys and values, in no particular order (`remove` moves the last entry into the gap).
/// Every user bounds its size (a few hundred at most).
#[derive(Debug, Clone)]
pub(super) struct SmallMap<K, V>(SmallVec<[(K, V); 2]>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(SmallVec::new())
    }
}

impl<K: PartialEq, V> SmallMap<K, V> {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(super) fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub(super) fn insert(&mut self, key: K, value: V) {
        match self.get_mut(&key) {
            Some(v) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value of `key`, inserted by `make` when missing.
    pub(super) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.0.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.0.push((key, make()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(i).1)
    }
}

#[cfg(test)]
mod tests {
    use super::SmallMap;

    #[test]
    fn behaves_like_a_map() {
        let mut m = SmallMap::default();
        m.insert(1u32, "a");
        m.insert(2, "b");
        m.insert(1, "c");
        assert_eq!((m.len(), m.get(&1), m.get(&2)), (2, Some(&"c"), Some(&"b")));
        *m.get_or_insert_with(3, || "d") = "e";
        assert_eq!(m.get_or_insert_with(3, || "x"), &"e");
        assert_eq!(m.remove(&1), Some("c"));
        assert_eq!((m.remove(&1), m.contains(&2), m.len()), (None, true, 2));
    }
}
