//! The Grafana dashboard (`docs/grafana/service-budget.json`) queries only metrics that
//! `PrometheusCollector` exports, and covers what it promises to show.
#![cfg(feature = "prometheus")]

use limited_allocator::metrics::{PrometheusCollector, RequestStats, ShedReason};
use limited_allocator::monitor::MemoryMonitor;
use limited_allocator::sampler::Sampler;
use limited_allocator::LimitedAllocator;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const DASHBOARD: &str = include_str!("../../docs/grafana/service-budget.json");

/// Every query string in the dashboard: panel targets' `expr` and template queries.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `limited_allocator_*` names a PromQL string mentions.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("limited_allocator_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// A sampler over fixture files, so every optional number is readable.
struct Fixture(std::path::PathBuf);

impl Fixture {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!(
            "limited-allocator-dashboard-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let files = [
            (
                "proc/self/status",
                "VmHWM:\t4096 kB\nVmRSS:\t2048 kB\nRssAnon:\t1024 kB\n",
            ),
            (
                "proc/meminfo",
                "MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n",
            ),
            ("proc/self/cgroup", "0::/svc\n"),
            ("sys/fs/cgroup/svc/memory.max", "4194304"),
            ("sys/fs/cgroup/svc/memory.high", "4000000"),
            ("sys/fs/cgroup/svc/memory.current", "3000000"),
            ("sys/fs/cgroup/svc/memory.stat", "inactive_file 1000000\n"),
            ("sys/fs/cgroup/svc/memory.events", "oom_kill 2\n"),
            (
                "proc/pressure/memory",
                "some avg10=12.50 avg60=1.00 avg300=0 total=1\n\
                 full avg10=2.00 avg60=0.50 avg300=0 total=1\n",
            ),
        ];
        for (path, text) in files {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        Self(root)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every metric name in the exposition (histogram series with their suffixes).
fn exported() -> BTreeSet<String> {
    let f = Fixture::new();
    let alloc = Arc::new(LimitedAllocator::new(std::alloc::System, 1 << 20));
    let monitor = MemoryMonitor::builder()
        .sampler(Sampler::with_root(&f.0).with_max_age(Duration::ZERO))
        .budget_source(alloc.clone())
        .build()
        .unwrap();
    let _held = alloc.try_reserve(100 << 10).unwrap();
    monitor.sample_now();
    let requests = RequestStats::new();
    requests.record_peak(5000);
    requests.record_shed(ShedReason::AllocatorLevel);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(
        PrometheusCollector::new(monitor.handle()).with_requests(requests),
    ));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            l[..end].to_string()
        })
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    assert!(all.len() >= 10, "only {} queries found", all.len());
    let exported = exported();
    let used: BTreeSet<String> = all.iter().flat_map(|q| metric_names(q)).collect();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the collector does not export: {unknown:?}\nexported: {exported:?}"
    );
    // What the dashboard is for: limit against allocated and RSS, the level over time,
    // refusals, shed requests, request peaks.
    for needed in [
        "limited_allocator_limit_bytes",
        "limited_allocator_allocated_bytes",
        "limited_allocator_process_rss_bytes",
        "limited_allocator_pressure_level",
        "limited_allocator_refusals_total",
        "limited_allocator_requests_shed_total",
        "limited_allocator_request_peak_bytes_bucket",
    ] {
        assert!(used.contains(needed), "no panel queries {needed}");
    }
}

#[test]
fn the_name_check_sees_a_misspelled_metric() {
    assert_eq!(
        metric_names(
            "rate(limited_allocator_refusal_total{x=\"1\"}[5m]) / limited_allocator_limit_bytes"
        ),
        [
            "limited_allocator_refusal_total",
            "limited_allocator_limit_bytes"
        ]
    );
    assert!(!exported().contains("limited_allocator_refusal_total"));
}

#[test]
fn every_panel_has_a_title_and_a_unique_id() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len());
    assert!(panels
        .iter()
        .all(|p| p["title"].as_str().is_some_and(|t| !t.is_empty())));
}
