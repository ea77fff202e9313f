//! The loom models of `limited-allocator`'s concurrency protocols, compiled from the very
//! files the crate uses (`#[path]`), so the models check the real code. Run by `.ci/run`:
//! `RUSTFLAGS="--cfg loom" cargo test --release --manifest-path loom-models/Cargo.toml`.
#![allow(dead_code, unreachable_pub)]

#[path = "../src/sync.rs"]
mod sync;

#[path = "../src/pin.rs"]
mod pin;

#[path = "../src/credit_pool.rs"]
mod credit_pool;
