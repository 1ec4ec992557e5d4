//! The tool gate of a cluster node's shadow ([`kugetsu_protocol::TaskSpec::tool_gate`]): every
//! tool call waits, after its intent is journaled and its `tool_start` sent, for the
//! supervisor's `proceed` with the call's id.
//!
//! The supervisor sends `proceed` once the intent is in the cluster's database, so a node that
//! takes the task over knows the call may have run and never runs it again. The wait has no
//! timeout: a supervisor frozen through a database outage is the one that decides to kill.
//! Cancel and shutdown stop the wait like any other await of the agent loop (the loop's
//! future is dropped); the reader task ([`crate::ipc`]) asks [`ToolGate::is_waiting`] when
//! stdin ends, because a supervisor gone while a call waits must leave the call unanswered
//! for the node that takes over.
//!
//! A task without the gate has no [`ToolGate`] at all: its calls pay nothing.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Where the reader task hands `proceed` to the call waiting for it.
#[derive(Debug, Default)]
pub struct ToolGate {
    /// The call waiting for its `proceed`, and how to wake it. One at most: the agent runs a
    /// turn's tool calls one after another.
    waiting: Mutex<Option<(String, oneshot::Sender<()>)>>,
}

/// The go-ahead one call waits for (see [`ToolGate::expect`]).
#[derive(Debug)]
pub struct Pass {
    rx: oneshot::Receiver<()>,
}

impl ToolGate {
    /// A gate shared by the agent loop and the reader task.
    pub fn new() -> Arc<ToolGate> {
        Arc::new(ToolGate::default())
    }

    /// Registers `call_id` as the call that waits. Called before its `tool_start` goes out,
    /// so a `proceed` can never arrive before anyone waits for it.
    pub fn expect(&self, call_id: &str) -> Pass {
        let (tx, rx) = oneshot::channel();
        // A call still registered was abandoned (its future dropped): this one replaces it.
        *self.lock() = Some((call_id.to_owned(), tx));
        Pass { rx }
    }

    /// The supervisor's `proceed` for `call_id`: wakes that call if it is the one waiting,
    /// else warns (on stderr) and does nothing.
    pub fn proceed(&self, call_id: &str) {
        let mut waiting = self.lock();
        match waiting.take() {
            Some((id, tx)) if id == call_id => {
                // A receiver gone (the call was cancelled meanwhile) needs no wake-up.
                let _ = tx.send(());
            }
            Some(other) => {
                eprintln!(
                    "kugetsu-worker: ignoring proceed for call {call_id}: call {} is the one waiting",
                    other.0
                );
                *waiting = Some(other);
            }
            None => {
                eprintln!(
                    "kugetsu-worker: ignoring proceed for call {call_id}: no call is waiting"
                );
            }
        }
    }

    /// Whether a call waits for its `proceed` right now.
    pub fn is_waiting(&self) -> bool {
        self.lock().as_ref().is_some_and(|(_, tx)| !tx.is_closed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, oneshot::Sender<()>)>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pass {
    /// Waits for the call's `proceed`.
    pub async fn wait(self) {
        if self.rx.await.is_err() {
            // The gate let go of this call without a go-ahead (another call replaced it):
            // the call must not run, so it waits until the task is stopped.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `pass` got its go-ahead, polled once (a timeout polls its future before it
    /// looks at the clock): everything a pass waits on happens synchronously here.
    async fn passed(pass: &mut std::pin::Pin<Box<impl Future<Output = ()>>>) -> bool {
        tokio::time::timeout(Duration::ZERO, pass.as_mut())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_waiting_calls_proceed_lets_it_go() {
        let gate = ToolGate::new();
        assert!(!gate.is_waiting());
        let mut pass = Box::pin(gate.expect("call_a").wait());
        assert!(gate.is_waiting());
        gate.proceed("call_b");
        assert!(!passed(&mut pass).await, "another call's proceed let it go");
        assert!(gate.is_waiting(), "another call's proceed unregistered it");
        gate.proceed("call_a");
        assert!(passed(&mut pass).await);
        assert!(!gate.is_waiting());
        // A late duplicate finds nobody waiting and is ignored.
        gate.proceed("call_a");
        assert!(!gate.is_waiting());
    }

    #[tokio::test]
    async fn a_call_dropped_while_waiting_is_no_longer_waiting() {
        let gate = ToolGate::new();
        let pass = gate.expect("call_a");
        assert!(gate.is_waiting());
        drop(pass); // the agent loop's future was dropped (cancel, shutdown)
        assert!(!gate.is_waiting());
        gate.proceed("call_a"); // nobody to wake: no harm
    }

    #[tokio::test]
    async fn a_replaced_call_never_proceeds() {
        let gate = ToolGate::new();
        let mut first = Box::pin(gate.expect("call_a").wait());
        let mut second = Box::pin(gate.expect("call_b").wait());
        gate.proceed("call_a");
        assert!(!passed(&mut first).await);
        gate.proceed("call_b");
        assert!(passed(&mut second).await);
        assert!(!passed(&mut first).await);
    }
}
