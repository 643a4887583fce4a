//! Redis state store (in progress).
