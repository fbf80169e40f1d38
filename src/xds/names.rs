//! Sets of resource names a stream subscribes to.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex, Weak},
};

use crate::sorted;

/// A set of resource names: sorted, each shared with the snapshot that has
/// it, and the set itself shared by every stream that subscribes to the
/// same names. The Envoys of one node type mostly do (the same clusters,
/// so the same EDS names): 10,000 of them subscribed to 100 clusters hold
/// one set of 100 names, not 10,000 (1.6 KB each).
#[derive(Debug, Clone)]
pub struct Names(Arc<[Arc<str>]>);

impl Default for Names {
    fn default() -> Self {
        static EMPTY: LazyLock<Arc<[Arc<str>]>> = LazyLock::new(|| Arc::new([]));
        Self(EMPTY.clone())
    }
}

impl Names {
    pub fn new(names: impl Iterator<Item = Arc<str>>) -> Self {
        let mut names: Vec<Arc<str>> = names.collect();
        if names.is_empty() {
            return Self::default();
        }
        names.sort_unstable();
        names.dedup();
        Self(intern(names))
    }

    /// This set's names that are in `sorted` (in order and distinct, as a
    /// snapshot lists them), in order: one gallop through the set
    /// (see [`crate::sorted`]). A full push rewarms every cluster's
    /// endpoints on every stream, and a lookup per name was a seventh of
    /// the push's instructions.
    pub fn common(&self, sorted: &[Arc<str>]) -> Vec<&Arc<str>> {
        sorted::named(&self.0, sorted, |name| name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    /// This set's copy of `name`, which must be in it.
    pub fn shared(&self, name: &str) -> Arc<str> {
        match self.0.binary_search_by(|n| (**n).cmp(name)) {
            Ok(i) => self.0[i].clone(),
            Err(_) => Arc::from(name),
        }
    }

    /// The set's own copies of its names, in order.
    pub fn shared_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|name| &**name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the set is exactly `names`, given in sorted order (a
    /// snapshot's names of one type): one pass, no lookup.
    pub fn is<'a>(&self, names: impl ExactSizeIterator<Item = &'a Arc<str>>) -> bool {
        self.0.len() == names.len() && self.0.iter().zip(names).all(|(mine, theirs)| sorted::same(mine, theirs))
    }
}

/// The sets in use, by a digest of their names. Taken only when a stream's
/// subscription changes, never on an ACK that repeats it.
struct Interned {
    sets: HashMap<u64, Weak<[Arc<str>]>>,
    /// Entries whose sets are gone are swept once there are this many.
    sweep_at: usize,
}

static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(|| Mutex::new(Interned { sets: HashMap::new(), sweep_at: 64 }));

/// The set in use with exactly these (sorted, distinct) names, or a new one.
fn intern(names: Vec<Arc<str>>) -> Arc<[Arc<str>]> {
    let key = crate::wire::list_digest(names.iter().map(|name| name.as_bytes()));
    let mut interned = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    // A digest collision is told by comparing the names.
    if let Some(set) = interned.sets.get(&key).and_then(Weak::upgrade).filter(|set| **set == *names) {
        return set;
    }
    let set: Arc<[Arc<str>]> = names.into();
    interned.sets.insert(key, Arc::downgrade(&set));
    if interned.sets.len() >= interned.sweep_at {
        interned.sets.retain(|_, set| set.strong_count() > 0);
        interned.sweep_at = (interned.sets.len() * 2).max(64);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Names {
        Names::new(list.iter().map(|name| Arc::from(*name)))
    }

    #[test]
    fn streams_with_the_same_names_share_one_set() {
        let (a, b) = (names(&["x", "y", "interned-test"]), names(&["interned-test", "y", "x", "y"]));
        assert!(Arc::ptr_eq(&a.0, &b.0), "the same set, listed another way, is shared");
        assert_eq!(b.iter().collect::<Vec<_>>(), ["interned-test", "x", "y"]);
        let c = names(&["x", "interned-test"]);
        assert!(!Arc::ptr_eq(&a.0, &c.0));
        assert!(c.contains("x") && !c.contains("y"));
        assert!(names(&[]).is_empty());
        let list = |list: &[&str]| list.iter().map(|name| Arc::<str>::from(*name)).collect::<Vec<_>>();
        assert!(b.is(list(&["interned-test", "x", "y"]).iter()));
        assert!(!b.is(list(&["interned-test", "x"]).iter()) && !b.is(list(&["interned-test", "x", "z"]).iter()));
        assert!(names(&[]).is([].iter()));

        // A set nobody holds is not kept: the next one is new, and equal.
        let weak = Arc::downgrade(&a.0);
        drop((a, b));
        assert_eq!(weak.strong_count(), 0);
        let again = names(&["x", "y", "interned-test"]);
        assert_eq!(again.iter().collect::<Vec<_>>(), ["interned-test", "x", "y"]);
    }

    #[test]
    fn the_common_names_are_the_sets_own() {
        let sorted = |list: &[&str]| list.iter().map(|name| Arc::<str>::from(*name)).collect::<Vec<_>>();
        let common = |set: &Names, list: &[Arc<str>]| set.common(list).into_iter().map(|name| name.to_string()).collect::<Vec<_>>();
        let set = names(&["common-b", "common-d", "common-e", "common-g"]);
        assert_eq!(common(&set, &sorted(&["common-a", "common-b", "common-d", "common-f", "common-g"])), ["common-b", "common-d", "common-g"]);
        assert!(common(&set, &[]).is_empty() && common(&Names::default(), &sorted(&["common-b"])).is_empty());
        let found = set.common(&sorted(&["common-e"]));
        assert!(Arc::ptr_eq(found[0], &set.0[2]), "the set's copy, to compare by address later");
        // Told by address where shared, by the strings where not.
        let shared = sorted(&["shared-b", "shared-d", "shared-e"]);
        let by_address = Names::new(shared.iter().cloned());
        assert!(Arc::ptr_eq(&by_address.0[0], &shared[0]), "the set holds the names given");
        assert!(by_address.is(shared.iter()) && !set.is(shared.iter()));
        assert!(by_address.is(sorted(&["shared-b", "shared-d", "shared-e"]).iter()));
    }

    #[test]
    fn sets_that_are_gone_are_swept() {
        for i in 0..1000 {
            drop(names(&[&format!("swept-{i}")]));
        }
        let held: Vec<Names> = (0..10).map(|i| names(&[&format!("held-{i}")])).collect();
        let interned = INTERNED.lock().unwrap();
        // Other tests intern sets at the same time; the dead 1,000 are not all kept.
        assert!(interned.sets.len() < 500, "{} entries", interned.sets.len());
        drop(interned);
        assert!(held.iter().all(|set| set.iter().count() == 1));
    }
}
