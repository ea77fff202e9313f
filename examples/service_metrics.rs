//! Serves the allocator's and the monitor's metrics on `http://127.0.0.1:PORT/metrics`
//! while allocating in steps, so the pressure level can be watched moving, then stops by
//! itself.
//!
//! ```text
//! cargo run --example service_metrics --features prometheus -- [PORT] [SECONDS]
//! curl -s localhost:9464/metrics | grep limited_allocator_pressure_level
//! ```
//!
//! PORT defaults to 9464 (0 picks a free one), SECONDS to 30. The budget is 128 MiB; each
//! cycle fills it in 5 % steps (Low, Medium at 60 %, High at 80 %, Critical at 95 %, then a
//! refused step), and frees everything (back to Low).

use limited_allocator::metrics::PrometheusCollector;
use limited_allocator::monitor::MemoryMonitor;
use limited_allocator::LimitedAllocator;
use prometheus_client::registry::Registry;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: usize = 128 << 20;

#[global_allocator]
static ALLOC: LimitedAllocator = LimitedAllocator::new(std::alloc::System, LIMIT);

/// What a run did, for the test below.
#[derive(Debug, Default)]
struct Report {
    transitions: Vec<String>,
    scrapes: u64,
    refused_steps: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(9464);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!(
        "serving http://{}/metrics for {seconds} s (budget {})",
        listener.local_addr()?,
        limited_allocator::ByteSize(LIMIT)
    );
    let report = run(listener, Duration::from_secs(seconds))?;
    println!(
        "done: {} transitions, {} scrapes, {} refused steps",
        report.transitions.len(),
        report.scrapes,
        report.refused_steps
    );
    Ok(())
}

fn run(listener: TcpListener, bound: Duration) -> Result<Report, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + bound;
    // About two fill-and-free cycles of 21 steps in the time given.
    let step = (bound / 45).max(Duration::from_millis(1));
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&transitions);
    let monitor = MemoryMonitor::builder()
        .allocator(&ALLOC)
        .interval((step / 2).max(Duration::from_millis(1)))
        .listener(move |event| {
            println!("{event}");
            sink.lock().unwrap().push(event.to_string());
        })
        .start()?;

    let mut registry = Registry::default();
    registry.register_collector(Box::new(PrometheusCollector::new(monitor.handle())));
    let registry = Arc::new(registry);
    let stop = Arc::new(AtomicBool::new(false));
    listener.set_nonblocking(true)?;
    let server = {
        let (registry, stop) = (Arc::clone(&registry), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || serve(&listener, &registry, &stop))?
    };

    let mut refused_steps = 0;
    let mut held: Vec<Vec<u8>> = Vec::new();
    while Instant::now() < deadline {
        let mut block = Vec::new();
        if block.try_reserve_exact(LIMIT / 20).is_ok() {
            // Touch the pages, so RSS moves too. Copied a page at a time: `resize` writes
            // byte by byte in a debug build, which under load made the steps so slow that
            // the test's 2 s ran out before the budget was full.
            let page = [1u8; 4096];
            while block.len() < LIMIT / 20 {
                let n = (LIMIT / 20 - block.len()).min(page.len());
                block.extend_from_slice(&page[..n]);
            }
            held.push(block);
        } else {
            refused_steps += 1;
            held.clear(); // release everything: the level falls back to Low
        }
        std::thread::sleep(step);
    }
    drop(held);
    stop.store(true, Ordering::Relaxed);
    let scrapes = server.join().map_err(|_| "metrics server panicked")?;
    drop(monitor);
    let transitions = transitions.lock().unwrap().clone();
    Ok(Report {
        transitions,
        scrapes,
        refused_steps,
    })
}

/// A tiny HTTP/1.1 responder: `GET /metrics` gets the text exposition, anything else 404.
fn serve(listener: &TcpListener, registry: &Registry, stop: &AtomicBool) -> u64 {
    let mut scrapes = 0;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if respond(stream, registry).unwrap_or(false) {
                    scrapes += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    scrapes
}

fn respond(stream: TcpStream, registry: &Registry) -> std::io::Result<bool> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut stream = &stream;
    let is_metrics = request_line.starts_with("GET /metrics ");
    if is_metrics {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, registry)
            .map_err(|_| std::io::Error::other("encoding metrics failed"))?;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; \
             charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    } else {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
        )?;
    }
    stream.flush()?;
    Ok(is_metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    }

    /// Runs the example for about 2 s on a free port and scrapes it.
    #[test]
    fn serves_metrics_and_levels_move() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let runner = std::thread::spawn(move || run(listener, Duration::from_secs(2)).unwrap());
        std::thread::sleep(Duration::from_millis(500));
        let response = get(addr, "/metrics");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        for name in [
            "limited_allocator_allocated_bytes ",
            "limited_allocator_limit_bytes 134217728",
            "limited_allocator_pressure_level ",
            "limited_allocator_level_samples_total{level=\"low\"}",
        ] {
            assert!(response.contains(name), "{name} missing in {response}");
        }
        assert!(get(addr, "/other").starts_with("HTTP/1.1 404"));
        let report = runner.join().unwrap();
        assert!(report.scrapes >= 1);
        assert!(report.refused_steps >= 1, "{report:?}");
        // The level climbed all the way and came back down.
        assert!(
            report.transitions.iter().any(|t| t.contains("-> critical")),
            "{report:?}"
        );
        assert!(
            report.transitions.iter().any(|t| t.contains("-> low")),
            "{report:?}"
        );
    }
}
