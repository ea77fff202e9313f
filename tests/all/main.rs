//! The tests of standalone instances (not the global allocator), one test binary with a
//! module per concern, as bumpalo lays out its `tests/all/`: one link step instead of ten.
//!
//! `tests/instances.rs` stays its own binary: it keeps more instances alive than there are
//! slots with a per-thread cache, and reuses the slot of an instance it dropped, so it needs
//! a process whose slot table no other test is using at the same time. The tests that
//! install the allocator as `#[global_allocator]` are in `allocator-tests/`.

#[path = "../common/mod.rs"]
mod common;

mod allocator_api;
mod arrow_pool;
mod chunking;
mod concurrency;
mod dashboard;
mod entered;
mod fast_path;
mod inner_allocator;
mod large_blocks;
mod leak_corpus;
mod model;
mod overdraft;
mod standalone;
mod tower_layer;
