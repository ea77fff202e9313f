//! Monitor events as structured `tracing` events (feature `tracing`), so a service sees
//! its memory pressure in the logs it already has.
//!
//! ```
//! let monitor = limited_allocator::monitor::MemoryMonitor::builder()
//!     .listener(limited_allocator::tracing::log_events)
//!     .build()?;
//! # Ok::<(), limited_allocator::monitor::MonitorError>(())
//! ```
//!
//! Each combined-level change is one event with target `limited_allocator::monitor` and
//! the fields:
//!
//! | field | value |
//! |---|---|
//! | `from`, `to` | the levels, `low` .. `critical` |
//! | `rising` | whether the level went up |
//! | `signal` | the signal that set the new level (the first reason), e.g. `rss` |
//! | `used_bytes`, `limit_bytes`, `percent` | that signal's numbers, where it has them |
//! | `reasons` | every signal at the new level, as text |
//!
//! Rising to High or Critical logs at `WARN`, any other change at `INFO`. A suspected leak
//! logs at `WARN` with `metric` and its text.

use crate::monitor::{MonitorEvent, Reason};
use crate::PressureLevel;
use ::tracing::Level;

/// The target of every event logged here.
pub const TARGET: &str = "limited_allocator::monitor";

/// Logs `event` as a `tracing` event; pass it to
/// [`MonitorBuilder::listener`](crate::monitor::MonitorBuilder::listener) or
/// [`MonitorHandle::add_listener`](crate::monitor::MonitorHandle::add_listener).
///
/// ```
/// use limited_allocator::{monitor::MonitorEvent, PressureLevel};
/// // Without a subscriber this does nothing; with one, it is a WARN event.
/// limited_allocator::tracing::log_events(&MonitorEvent::LevelChanged {
///     from: PressureLevel::Medium,
///     to: PressureLevel::High,
///     reasons: vec![],
/// });
/// ```
pub fn log_events(event: &MonitorEvent) {
    match event {
        MonitorEvent::LevelChanged { from, to, reasons } => level_changed(*from, *to, reasons),
        MonitorEvent::LeakSuspected(leak) => ::tracing::event!(
            target: TARGET,
            Level::WARN,
            metric = %leak.metric,
            "{leak}"
        ),
        // Events added later are logged by their text.
        #[allow(unreachable_patterns)]
        other => ::tracing::event!(target: TARGET, Level::INFO, "{other}"),
    }
}

/// A signal's numbers for the event's fields: what it measured, what against, the share.
fn numbers(reason: &Reason) -> (Option<u64>, Option<u64>, Option<f64>) {
    let of = |used: u64, limit: u64| (Some(used), Some(limit), Some(percent(used, limit)));
    match *reason {
        Reason::Allocator {
            allocated_bytes,
            limit_bytes,
            ..
        } => of(allocated_bytes, limit_bytes),
        Reason::Rss {
            rss_bytes,
            limit_bytes,
            ..
        } => of(rss_bytes, limit_bytes),
        Reason::Cgroup {
            working_set_bytes,
            limit_bytes,
            ..
        } => of(working_set_bytes, limit_bytes),
        Reason::SystemAvailable {
            available_bytes,
            min_available_bytes,
            ..
        } => (Some(available_bytes), Some(min_available_bytes), None),
        Reason::Psi { some_avg10, .. } => (None, None, Some(some_avg10)),
        #[allow(unreachable_patterns)]
        _ => (None, None, None),
    }
}

fn percent(used: u64, of: u64) -> f64 {
    if of == 0 {
        100.0
    } else {
        used as f64 * 100.0 / of as f64
    }
}

fn level_changed(from: PressureLevel, to: PressureLevel, reasons: &[Reason]) {
    let rising = to > from;
    let top = reasons.first();
    let signal = top.map(|r| r.signal().as_str()).unwrap_or("none");
    let (used_bytes, limit_bytes, percent) = top.map(numbers).unwrap_or_default();
    let text = reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    macro_rules! emit {
        ($level:expr) => {
            ::tracing::event!(
                target: TARGET,
                $level,
                from = from.as_str(),
                to = to.as_str(),
                rising,
                signal,
                used_bytes,
                limit_bytes,
                percent,
                reasons = %text,
                "memory pressure {from} -> {to}"
            )
        };
    }
    if rising && to >= PressureLevel::High {
        emit!(Level::WARN);
    } else {
        emit!(Level::INFO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tracing::field::{Field, Visit};
    use ::tracing::span::{Attributes, Id, Record};
    use ::tracing::{Event, Metadata, Subscriber};
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::sync::{Arc, Mutex};

    /// An event's level, target and fields as text.
    type Captured = (Level, String, BTreeMap<String, String>);

    /// Captures every event.
    #[derive(Default, Clone)]
    struct Capture(Arc<Mutex<Vec<Captured>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            let m = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push((*m.level(), m.target().to_string(), fields));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    fn captured(f: impl FnOnce()) -> Vec<Captured> {
        let capture = Capture::default();
        ::tracing::subscriber::with_default(capture.clone(), f);
        let events = capture.0.lock().unwrap().clone();
        events
    }

    #[test]
    fn a_rise_to_high_is_a_warning_with_the_reasons_numbers() {
        let events = captured(|| {
            log_events(&MonitorEvent::LevelChanged {
                from: PressureLevel::Medium,
                to: PressureLevel::High,
                reasons: vec![
                    Reason::Rss {
                        level: PressureLevel::High,
                        rss_bytes: 900 << 20,
                        limit_bytes: 1 << 30,
                        limit_source: crate::monitor::LimitSource::Cgroup,
                    },
                    Reason::Allocator {
                        level: PressureLevel::High,
                        allocated_bytes: 850 << 20,
                        limit_bytes: 1 << 30,
                    },
                ],
            })
        });
        assert_eq!(events.len(), 1);
        let (level, target, f) = &events[0];
        assert_eq!((*level, target.as_str()), (Level::WARN, TARGET));
        assert_eq!(f["from"], "medium");
        assert_eq!(f["to"], "high");
        assert_eq!(f["rising"], "true");
        assert_eq!(f["signal"], "rss");
        assert_eq!(f["used_bytes"], (900u64 << 20).to_string());
        assert_eq!(f["limit_bytes"], (1u64 << 30).to_string());
        assert_eq!(f["percent"], "87.890625");
        assert_eq!(
            f["reasons"],
            "rss 900.0 MiB of 1.0 GiB cgroup limit (87.9%): high; \
             allocator 850.0 MiB of 1.0 GiB limit (83.0%): high"
        );
        assert_eq!(f["message"], "memory pressure medium -> high");
    }

    #[test]
    fn a_fall_is_info_and_a_signal_without_bytes_leaves_them_out() {
        let events = captured(|| {
            log_events(&MonitorEvent::LevelChanged {
                from: PressureLevel::Critical,
                to: PressureLevel::Medium,
                reasons: vec![Reason::Psi {
                    level: PressureLevel::Medium,
                    some_avg10: 12.5,
                }],
            })
        });
        let (level, _, f) = &events[0];
        assert_eq!(*level, Level::INFO);
        assert_eq!(
            (f["rising"].as_str(), f["signal"].as_str()),
            ("false", "psi")
        );
        assert_eq!(f["percent"], "12.5");
        assert!(!f.contains_key("used_bytes") && !f.contains_key("limit_bytes"));
    }

    #[test]
    fn a_monitor_calls_it_on_a_real_transition() {
        use crate::monitor::{BudgetSource, MemoryMonitor};
        struct Fixed(usize);
        impl BudgetSource for Fixed {
            fn allocated_bytes(&self) -> usize {
                self.0
            }
            fn peak_bytes(&self) -> usize {
                self.0
            }
            fn limit(&self) -> usize {
                1000
            }
        }
        let monitor = MemoryMonitor::builder()
            .budget_source(Arc::new(Fixed(970)))
            .use_cgroup_limit(false)
            .psi_thresholds(None)
            .listener(log_events)
            .build()
            .unwrap();
        let events = captured(|| {
            monitor.sample_now();
        });
        let (level, _, f) = events
            .iter()
            .find(|(_, t, _)| t == TARGET)
            .expect("the transition was logged");
        assert_eq!(*level, Level::WARN);
        assert_eq!((f["from"].as_str(), f["to"].as_str()), ("low", "critical"));
        assert_eq!(f["signal"], "allocator");
        assert_eq!(f["used_bytes"], "970");
    }
}
