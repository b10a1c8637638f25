//! A connected client as the callbacks see it: its [`Outbox`] (id, address, sending) and the
//! state the application keeps for it ([`super::App::Session`]).

use std::ops::Deref;

use crate::outbox::Outbox;

/// One connected client. Derefs to its [`Outbox`]: `client.send(&message)`, `client.id()`.
/// Keep `client.outbox().clone()` to reach it later (from a task's `finish`, say).
#[derive(Debug)]
pub struct Client<S> {
    outbox: Outbox,
    session: S,
}

impl<S> Client<S> {
    pub(crate) fn new(outbox: Outbox, session: S) -> Client<S> {
        Client { outbox, session }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// What the application keeps for this connection, created with `Default` when it
    /// opened and dropped when it closes. Shared by the connection's callbacks, so state that
    /// changes needs a lock or an atomic (`Mutex<Option<String>>` for a nickname, say).
    pub fn session(&self) -> &S {
        &self.session
    }
}

impl<S> Deref for Client<S> {
    type Target = Outbox;

    fn deref(&self) -> &Outbox {
        &self.outbox
    }
}
