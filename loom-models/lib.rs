//! The loom models of `limited-allocator`'s concurrency protocols, compiled from the very
//! files the crate uses (`#[path]`), so the models check the real code. Run by `.ci/run`:
//! `RUSTFLAGS="--cfg loom" cargo test --release --manifest-path loom-models/Cargo.toml`.
#![allow(dead_code, unreachable_pub)]

#[path = "../src/budget/sync.rs"]
mod sync;

#[path = "../src/budget/pin.rs"]
mod pin;

#[path = "../src/budget/credit_pool.rs"]
mod credit_pool;
