//! The Tokio runtime a binary runs on: multi-threaded, every driver (I/O, time, signals) enabled.

/// Builds the runtime; the error says why the process cannot run.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
