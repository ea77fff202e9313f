//! The `static` pattern: the global allocator starts unlimited, and the test applies
//! `limit_from_env()` first thing, the way `main` would. Each value runs in a child process
//! that has `LIMITED_ALLOCATOR_LIMIT` set (or unset) from its start.

use allocator_tests::{child_role, physical_memory, run_child, ChildOutput};
use limited_allocator::config::LIMIT_ENV_VAR;
use limited_allocator::sampler::read_cgroup_memory;
use limited_allocator::{limit_from_env, LimitedAllocator};
use std::alloc::System;
use std::path::Path;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(System, LimitedAllocator::UNLIMITED);

/// The child: apply the configured limit and show that it holds.
fn child() {
    assert_eq!(
        ALLOC.limit(),
        LimitedAllocator::UNLIMITED,
        "a static starts unlimited"
    );
    match limit_from_env() {
        Ok(Some(limit)) => {
            ALLOC.set_refusal_reporting(false);
            ALLOC.set_limit(limit);
            println!("LIMIT={}", ALLOC.limit());
            let mut v: Vec<u8> = Vec::new();
            assert!(v.try_reserve(limit).is_err(), "the limit is not enforced");
            assert!(ALLOC.stats().refusals >= 1);
            println!("ENFORCED");
        }
        Ok(None) => println!("UNSET LIMIT={}", ALLOC.limit()),
        Err(e) => {
            eprintln!("config error: {e}");
            std::process::exit(2);
        }
    }
}

fn with_value(test: &str, value: Option<&str>) -> ChildOutput {
    match value {
        Some(v) => run_child(test, "apply", &[(LIMIT_ENV_VAR, v)], &[]),
        None => run_child(test, "apply", &[], &[LIMIT_ENV_VAR]),
    }
}

#[test]
fn a_size_from_the_environment_becomes_the_limit() {
    if child_role().is_some() {
        return child();
    }
    for (value, bytes) in [
        ("268435456", 268_435_456usize),
        ("256MiB", 256 << 20),
        ("1 gib", 1 << 30),
        ("2GB", 2_000_000_000),
        (" 512 KiB ", 512 << 10),
    ] {
        let out = with_value("a_size_from_the_environment_becomes_the_limit", Some(value));
        assert!(out.status.success(), "{value:?}: {out:#?}");
        assert!(
            out.stdout.contains(&format!("LIMIT={bytes}\n")),
            "{value:?}: {out:#?}"
        );
        assert!(out.stdout.contains("ENFORCED"), "{value:?}: {out:#?}");
    }
}

#[test]
fn a_percentage_is_of_the_cgroup_limit_else_of_physical_memory() {
    if child_role().is_some() {
        return child();
    }
    let base = read_cgroup_memory(Path::new("/"))
        .and_then(|c| c.limit_bytes)
        .or_else(physical_memory)
        .expect("a cgroup limit or the physical memory size");
    let expected = (base as f64 * 50.0 / 100.0) as u64;
    let out = with_value(
        "a_percentage_is_of_the_cgroup_limit_else_of_physical_memory",
        Some("50%"),
    );
    assert!(out.status.success(), "{out:#?}");
    assert!(
        out.stdout.contains(&format!("LIMIT={expected}\n")),
        "expected 50% of {base}: {out:#?}"
    );
    assert!(out.stdout.contains("ENFORCED"), "{out:#?}");
}

#[test]
fn unset_keeps_the_static_unlimited() {
    if child_role().is_some() {
        return child();
    }
    let out = with_value("unset_keeps_the_static_unlimited", None);
    assert!(out.status.success(), "{out:#?}");
    assert!(
        out.stdout
            .contains(&format!("UNSET LIMIT={}\n", usize::MAX)),
        "{out:#?}"
    );
}

#[test]
fn a_bad_value_is_an_error_naming_the_variable_and_quoting_the_value() {
    if child_role().is_some() {
        return child();
    }
    for bad in [
        "lots",
        "-5MB",
        "12 parsecs",
        "1.2.3GB",
        "150%",
        "0",
        "0%",
        "abc%",
    ] {
        let out = with_value(
            "a_bad_value_is_an_error_naming_the_variable_and_quoting_the_value",
            Some(bad),
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?} accepted: {out:#?}");
        let quoted = format!("config error: {LIMIT_ENV_VAR}={bad:?}");
        assert!(
            out.stderr.contains(&quoted),
            "{bad:?}: the error does not name the variable and quote the value: {out:#?}"
        );
        assert!(!out.stdout.contains("LIMIT="), "{bad:?}: {out:#?}");
    }
}
