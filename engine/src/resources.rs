//! Typed resources shared by the stages of one engine: a KG, a catalogue, a
//! text encoder, loaded once and used by every stage that needs them.
//!
//! A resource is named by a *key*: a small value type implementing
//! [`ResourceKey`] that says what to load (e.g. "the MiniLM in this
//! directory") and how. Two stages asking for equal keys get the same
//! `Arc`. Creation may ask for other resources (the linker needs the KG):
//! each key has its own cell, so no lock is held across the creation of
//! another resource, and a key that needs itself is reported as a cycle
//! instead of deadlocking.
//!
//! ```
//! use ecr_engine::resources::{ResourceKey, Resources};
//! use ecr_engine::BoxError;
//!
//! #[derive(Debug, Clone, PartialEq, Eq, Hash)]
//! struct Words(&'static str);
//! impl ResourceKey for Words {
//!     type Value = Vec<String>;
//!     fn create(&self, _: &Resources) -> Result<Vec<String>, BoxError> {
//!         Ok(self.0.split(' ').map(String::from).collect())
//!     }
//! }
//!
//! let res = Resources::new();
//! let a = res.get(&Words("a b"))?;
//! let b = res.get(&Words("a b"))?;
//! assert!(std::sync::Arc::ptr_eq(&a, &b));
//! # Ok::<(), BoxError>(())
//! ```

use crate::stage::BoxError;
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Names a shared resource and says how to create it.
pub trait ResourceKey: Hash + Eq + Clone + Debug + Send + Sync + 'static {
    /// The resource.
    type Value: Send + Sync + 'static;

    /// Create the resource; may [`Resources::get`] other resources.
    fn create(&self, resources: &Resources) -> Result<Self::Value, BoxError>;
}

/// One resource's slot: its own lock, held only while this resource is created.
type Cell<V> = Arc<Mutex<Option<Arc<V>>>>;

/// The resources of one engine (or of several engines that a host builds with
/// the same set). Cheap to clone; `Send + Sync`.
#[derive(Clone, Default)]
pub struct Resources {
    /// Per key type: a `HashMap<K, Cell<K::Value>>`, boxed.
    maps: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources").finish_non_exhaustive()
    }
}

thread_local! {
    /// Keys being created on this thread, outermost first, to report cycles.
    static CREATING: RefCell<Vec<(TypeId, String)>> = const { RefCell::new(Vec::new()) };
}

impl Resources {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The resource named by `key`, created on first use. Concurrent callers
    /// with the same key wait for one creation; a failed creation is not
    /// remembered (the next call tries again).
    pub fn get<K: ResourceKey>(&self, key: &K) -> Result<Arc<K::Value>, BoxError> {
        let cell = self.cell(key);
        let me = (TypeId::of::<K>(), format!("{key:?}"));
        if CREATING.with(|c| c.borrow().contains(&me)) {
            let chain = CREATING.with(|c| c.borrow().iter().map(|(_, k)| k.clone()).collect::<Vec<_>>());
            return Err(format!(
                "resource cycle: {} → {}: a resource cannot need itself while it is created",
                chain.join(" → "),
                me.1
            )
            .into());
        }
        let mut slot = cell.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = slot.as_ref() {
            return Ok(Arc::clone(v));
        }
        CREATING.with(|c| c.borrow_mut().push(me.clone()));
        let start = Instant::now();
        let created = key.create(self);
        CREATING.with(|c| c.borrow_mut().pop());
        let value = Arc::new(created?);
        tracing::debug!(resource = %me.1, elapsed_ms = start.elapsed().as_millis() as u64, "resource created");
        *slot = Some(Arc::clone(&value));
        Ok(value)
    }

    /// The resource named by `key` if it was created already.
    pub fn peek<K: ResourceKey>(&self, key: &K) -> Option<Arc<K::Value>> {
        let cell = self.cell(key);
        cell.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cell of `key`, made empty on first use. The map lock is held only here.
    fn cell<K: ResourceKey>(&self, key: &K) -> Cell<K::Value> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let map = maps
            .entry(TypeId::of::<K>())
            .or_insert_with(|| Box::new(HashMap::<K, Cell<K::Value>>::new()))
            .downcast_mut::<HashMap<K, Cell<K::Value>>>()
            .expect("the map under a key type's TypeId holds that key type");
        Arc::clone(map.entry(key.clone()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CREATED: AtomicUsize = AtomicUsize::new(0);

    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Base(u32);
    impl ResourceKey for Base {
        type Value = u32;
        fn create(&self, _: &Resources) -> Result<u32, BoxError> {
            CREATED.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(self.0 * 10)
        }
    }

    /// Needs `Base`: creating it takes another resource while its own is being made.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Derived(u32);
    impl ResourceKey for Derived {
        type Value = u32;
        fn create(&self, r: &Resources) -> Result<u32, BoxError> {
            Ok(*r.get(&Base(self.0))? + 1)
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct SelfNeeding;
    impl ResourceKey for SelfNeeding {
        type Value = ();
        fn create(&self, r: &Resources) -> Result<(), BoxError> {
            r.get(&SelfNeeding).map(|_| ())
        }
    }

    #[test]
    fn equal_keys_share_one_value_created_once_across_threads() {
        let res = Resources::new();
        let before = CREATED.load(Ordering::SeqCst);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let r = res.clone();
                std::thread::spawn(move || r.get(&Base(7)).unwrap())
            })
            .collect();
        let values: Vec<Arc<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(values.iter().all(|v| Arc::ptr_eq(v, &values[0]) && **v == 70));
        assert_eq!(CREATED.load(Ordering::SeqCst) - before, 1);
    }

    #[test]
    fn a_resource_needing_another_does_not_deadlock() {
        let res = Resources::new();
        assert_eq!(*res.get(&Derived(3)).unwrap(), 31);
        assert_eq!(*res.peek(&Base(3)).unwrap(), 30);
    }

    #[test]
    fn a_resource_needing_itself_is_a_cycle_error() {
        let e = Resources::new().get(&SelfNeeding).unwrap_err().to_string();
        assert!(e.contains("resource cycle"), "{e}");
    }
}
