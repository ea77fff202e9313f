//! Shared helpers for the global-allocator test binaries (see `tests/`).
