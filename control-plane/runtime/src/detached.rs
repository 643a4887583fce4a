//! Drop on a thread: owns a handle whose destruction blocks (a librdkafka client: purge, flush,
//! leave the group, thread joins) and destroys it on a thread of its own, whoever lets go of it
//! last, so that no async worker ever waits for it.

use std::fmt;
use std::ops::Deref;
use std::time::{Duration, Instant};

/// The handle `T`, destroyed on a thread of its own when dropped.
pub struct Detached<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> fmt::Debug for Detached<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached").finish_non_exhaustive()
    }
}

/// Why [`Detached::destroy`] did not see the handle destroyed.
#[derive(Debug)]
pub enum NotDestroyed {
    /// No thread could be started: the handle was destroyed inline.
    NoThread(std::io::Error),
    /// Still being destroyed when the bound ran out (it goes on in the background).
    TimedOut,
}

impl<T: Send + 'static> Detached<T> {
    /// Takes ownership of `inner`.
    pub fn new(inner: T) -> Self {
        Self(Some(inner))
    }

    /// Destroys the handle on a thread of its own and waits for that, at most `bound`: how long
    /// it took, or why it is not known to be done.
    pub async fn destroy(mut self, bound: Duration) -> Result<Duration, NotDestroyed> {
        let Some(inner) = self.0.take() else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("strata-destroy".into())
            .spawn(move || {
                drop(inner);
                let _ = done_tx.send(());
            })
            .map_err(NotDestroyed::NoThread)?;
        match tokio::time::timeout(bound, done_rx).await {
            Ok(_) => Ok(started.elapsed()),
            Err(_) => Err(NotDestroyed::TimedOut),
        }
    }
}

impl<T: Send + 'static> Deref for Detached<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            let spawned = std::thread::Builder::new()
                .name("strata-drop".into())
                .spawn(move || drop(inner));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread to destroy a client on; destroying it inline");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the thread it is dropped on.
    struct Probe(std::sync::mpsc::Sender<Option<String>>);

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self
                .0
                .send(std::thread::current().name().map(str::to_owned));
        }
    }

    #[test]
    fn a_drop_happens_on_a_thread_of_its_own() {
        let (tx, rx) = std::sync::mpsc::channel();
        drop(Detached::new(Probe(tx)));
        let thread = rx.recv_timeout(Duration::from_secs(5)).expect("dropped");
        assert_eq!(thread.as_deref(), Some("strata-drop"));
    }

    #[tokio::test]
    async fn destroy_waits_for_the_drop() {
        let (tx, rx) = std::sync::mpsc::channel();
        let took = Detached::new(Probe(tx))
            .destroy(Duration::from_secs(5))
            .await;
        assert!(took.is_ok(), "{took:?}");
        assert_eq!(
            rx.try_recv().ok().flatten().as_deref(),
            Some("strata-destroy")
        );
    }
}
