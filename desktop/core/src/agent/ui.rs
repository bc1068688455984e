//! What the agent shows: its state and session on watch channels, for a window or the control API.

use tokio::sync::watch;

use super::{Session, State};

/// The agent's published state and session.
pub(super) struct Ui {
    state: watch::Sender<State>,
    session: watch::Sender<Session>,
}

impl Ui {
    pub(super) fn new(state: watch::Sender<State>, session: watch::Sender<Session>) -> Self {
        Self { state, session }
    }

    /// Sets the state (readers wake only when it changed).
    pub(super) fn set(&self, s: State) {
        self.state.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }

    /// Paused by the volunteer: the session says it (the one place it is kept).
    pub(super) fn paused(&self) -> bool {
        self.session.borrow().paused
    }

    pub(super) fn set_paused(&self, paused: bool) {
        self.update(|s| s.paused = paused);
    }

    /// The coordinator of the session (the one that just failed, on failover).
    pub(super) fn coordinator_url(&self) -> String {
        self.session.borrow().coordinator_url.clone()
    }

    /// Changes the published session, taking the channel's write lock only when something changed: a reader may
    /// hold a borrow for a while (a UI), and an unchanged value must not wait for it.
    pub(super) fn update(&self, f: impl FnOnce(&mut Session)) {
        let mut next = self.session.borrow().clone();
        f(&mut next);
        if *self.session.borrow() != next {
            self.session.send_replace(next);
        }
    }
}
