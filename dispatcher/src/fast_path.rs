//! The fast path's switch: while this dispatcher routes and some worker has room, intake hands
//! valid submissions straight to the router (which sends one to a worker with room, skipping
//! its priority queue) instead of filing them. The router owns the switch — it opens it when it
//! starts routing, closes it when it stops, and says after every dispatch round whether any
//! worker has room (the core's decision); intake only reads it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether intake hands submissions to the router. Shared between the two (they run on
/// different tasks), hence atomics.
#[derive(Debug, Default)]
pub(crate) struct FastPath {
    /// Set while this dispatcher routes (and `dispatcher.fast_path` is on).
    open: AtomicBool,
    /// Whether some worker had room after the router's last dispatch round: otherwise intake
    /// files the submission itself, on its own connection, so a busy router does not slow it.
    room: AtomicBool,
}

impl FastPath {
    /// The router routes: submissions may come to it.
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// The router stopped routing (its session ended).
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// After a dispatch round: whether any worker has room left.
    pub(crate) fn set_room(&self, room: bool) {
        self.room.store(room, Ordering::Relaxed);
    }

    /// Whether intake should hand a submission to the router now.
    pub(crate) fn takes(&self) -> bool {
        self.open.load(Ordering::Relaxed) && self.room.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_go_to_the_router_only_while_it_routes_and_has_room() {
        let path = FastPath::default();
        path.set_room(true);
        assert!(!path.takes(), "closed until the router routes");
        path.open();
        assert!(path.takes());
        path.set_room(false);
        assert!(!path.takes(), "no worker has room");
        path.set_room(true);
        path.close();
        assert!(!path.takes());
    }
}
