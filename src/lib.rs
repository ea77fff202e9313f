//! WIP
mod cgroup;
mod config;
mod pressure;
mod units;
pub use cgroup::*;
pub use config::*;
pub use pressure::*;
pub use units::*;
