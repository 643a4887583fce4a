//! Producer replacement: when a producer that failed deliveries must give way to a fresh one (a
//! new producer id), and the swap itself.
//!
//! A producer that cannot deliver any more is replaced right after the failed send, so that the
//! caller's next try goes through its successor (already connecting while the caller backs
//! off): one that hit a fatal error (e.g. an out-of-order sequence after the broker lost its
//! producer state), one the broker fenced (it no longer accepts this producer's id or epoch:
//! every later record fails the same way, whether or not librdkafka flags the client fatal), and
//! one whose records timed out (an idempotent producer whose broker restarted and lost its
//! producer state can loop on an unknown producer id for ever, reporting only timeouts). A
//! needless replacement costs a reconnect.

use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use tracing::warn;

use crate::detached::Detached;

/// What the failed deliveries of one producer showed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryFailures {
    /// Some record's delivery timed out: the producer may be wedged.
    pub timed_out: bool,
    /// The broker no longer accepts this producer's id or epoch.
    pub fenced: bool,
}

impl DeliveryFailures {
    /// Notes one failed delivery.
    pub fn note(&mut self, error: &KafkaError) {
        let code = error.rdkafka_error_code();
        self.timed_out |= code == Some(RDKafkaErrorCode::MessageTimedOut);
        self.fenced |= matches!(
            code,
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::InvalidProducerIdMapping
            )
        );
    }

    /// Why a producer with these failures must be replaced, if it must (`fatal`: the client
    /// reports a fatal error).
    pub fn replacement_reason(&self, fatal: bool) -> Option<&'static str> {
        if fatal {
            Some("fatal error")
        } else if self.fenced {
            Some("fenced by the broker")
        } else if self.timed_out {
            Some("deliveries timed out")
        } else {
            None
        }
    }
}

/// A producer shared by concurrent senders, replaced in place; the old one is destroyed on a
/// thread of its own once its last sender lets go.
pub struct ProducerSlot<C: ClientContext + 'static> {
    name: &'static str,
    current: Mutex<Arc<Detached<FutureProducer<C>>>>,
}

impl<C: ClientContext + 'static> std::fmt::Debug for ProducerSlot<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerSlot")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C: ClientContext + 'static> ProducerSlot<C> {
    /// A slot holding `producer`; `name` says which producer in the logs.
    pub fn new(name: &'static str, producer: FutureProducer<C>) -> Self {
        Self {
            name,
            current: Mutex::new(Arc::new(Detached::new(producer))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Arc<Detached<FutureProducer<C>>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current producer.
    pub fn current(&self) -> Arc<Detached<FutureProducer<C>>> {
        Arc::clone(&self.lock())
    }

    /// The current producer, replaced first by `create()`'s if it hit a fatal error (whose
    /// failure is returned).
    pub fn usable<E>(
        &self,
        create: impl FnOnce() -> Result<FutureProducer<C>, E>,
    ) -> Result<Arc<Detached<FutureProducer<C>>>, E> {
        let mut current = self.lock();
        if let Some((code, reason)) = current.client().fatal_error() {
            warn!(
                producer = self.name,
                ?code,
                reason,
                "producer hit a fatal error; replacing it"
            );
            *current = Arc::new(Detached::new(create()?));
        }
        Ok(Arc::clone(&current))
    }

    /// Replaces `used`, whose sends failed with `failures`, by `create()`'s producer when the
    /// rules above say so (and no other sender replaced it already).
    pub fn replace_if_failed<E: Display>(
        &self,
        used: &Arc<Detached<FutureProducer<C>>>,
        failures: DeliveryFailures,
        create: impl FnOnce() -> Result<FutureProducer<C>, E>,
    ) {
        let fatal = used.client().fatal_error().is_some();
        if let Some(why) = failures.replacement_reason(fatal) {
            self.replace(used, why, create);
        }
    }

    /// Replaces the current producer now, e.g. because the broker lost its producer state (as
    /// when it lost its topics: an idempotent producer it no longer knows may see its records
    /// acknowledged and never stored).
    pub fn renew<E: Display>(
        &self,
        why: &str,
        create: impl FnOnce() -> Result<FutureProducer<C>, E>,
    ) {
        let current = self.current();
        self.replace(&current, why, create);
    }

    /// Replaces `old` by `create()`'s producer, unless another sender did already.
    fn replace<E: Display>(
        &self,
        old: &Arc<Detached<FutureProducer<C>>>,
        why: &str,
        create: impl FnOnce() -> Result<FutureProducer<C>, E>,
    ) {
        let mut current = self.lock();
        if !Arc::ptr_eq(&current, old) {
            return;
        }
        match create() {
            Ok(fresh) => {
                warn!(producer = self.name, reason = why, "replacing the producer");
                *current = Arc::new(Detached::new(fresh));
            }
            Err(e) => warn!(producer = self.name, error = %e, "producer not replaced"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(codes: &[RDKafkaErrorCode]) -> DeliveryFailures {
        let mut f = DeliveryFailures::default();
        for &code in codes {
            f.note(&KafkaError::MessageProduction(code));
        }
        f
    }

    #[test]
    fn the_rules_name_why_a_producer_is_replaced() {
        let timed_out = failed(&[RDKafkaErrorCode::MessageTimedOut]);
        assert!(timed_out.timed_out && !timed_out.fenced);
        assert_eq!(
            timed_out.replacement_reason(false),
            Some("deliveries timed out")
        );
        let fenced = failed(&[
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::ProducerFenced,
        ]);
        assert_eq!(
            fenced.replacement_reason(false),
            Some("fenced by the broker")
        );
        assert_eq!(fenced.replacement_reason(true), Some("fatal error"));
        let other = failed(&[RDKafkaErrorCode::UnknownTopicOrPartition]);
        assert_eq!(other.replacement_reason(false), None);
    }
}
