//! How many control connections each account has open while it sends its
//! request: each may buffer up to the longest request line, so one
//! account other than root gets a bounded number at once, and root is
//! never crowded out.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Connections one account other than root may hold at once.
pub const PER_UID: usize = 16;

/// Open control connections per uid.
#[derive(Default)]
pub struct Open(Arc<Mutex<HashMap<u32, usize>>>);

/// One open connection of a uid; gives its place back when dropped.
pub struct Slot(Arc<Mutex<HashMap<u32, usize>>>, u32);

impl Open {
    /// A place for one more connection of `uid`, if it has one (root
    /// always does).
    pub fn take(&self, uid: u32) -> Option<Slot> {
        if uid == 0 {
            return Some(Slot(Arc::default(), 0));
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(uid).or_default();
        if *n >= PER_UID {
            return None;
        }
        *n += 1;
        Some(Slot(self.0.clone(), uid))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gets_its_share_and_root_always_a_place() {
        let open = Open::default();
        let mut held: Vec<Slot> = (0..PER_UID).map(|_| open.take(1000).unwrap()).collect();
        assert!(open.take(1000).is_none());
        // Another account and root are not crowded out.
        assert!(open.take(1001).is_some());
        let roots: Vec<Slot> = (0..100).map(|_| open.take(0).unwrap()).collect();
        drop(roots);
        // One given back: one more place, and no other.
        drop(held.pop());
        let _again = open.take(1000).unwrap();
        assert!(open.take(1000).is_none());
    }
}
