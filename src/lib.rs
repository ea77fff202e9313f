//! WIP
mod cgroup;
mod config;
mod leak;
mod pressure;
mod sampler;
mod units;
pub use cgroup::*;
pub use config::*;
pub use leak::*;
pub use pressure::*;
pub use sampler::*;
pub use units::*;
