//! The service of `service_budget`: shared with the load test in `allocator-tests/`
//! (`tests/service_load.rs` includes this file), so the test drives the same code.
//!
//! - `GET /work?kib=N&ms=M`: allocates N KiB (fallibly), fills and sums it across a few
//!   yields, holds it M ms (default 0), answers `200 sum=...`; `503 over budget` if the
//!   request's own budget cannot hold it; `400` naming the parameter if N or M is not a
//!   number.
//! - `GET /metrics`: the Prometheus text exposition (outside the per-request budget, so
//!   it answers under pressure too).
//! - `GET /quit`: stops the server.
//!
//! Every `/work` request goes through [`BudgetLayer`]: it is shed with `503` when the
//! allocator's level (or the monitor's) is at or above the shedding level, or when its
//! reservation cannot be had.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use limited_allocator::metrics::{PrometheusCollector, RequestStats};
use limited_allocator::monitor::MemoryMonitor;
use limited_allocator::tower::{Budget, BudgetError, BudgetLayer};
use limited_allocator::{LimitedAllocator, Overflow, PressureLevel, PressureThresholds};
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_layer::Layer;
use tower_service::Service;

/// Room in each reservation beyond the work buffer: the handler's own small allocations
/// (query parsing, the response) under `Overflow::Refuse`.
pub const REQUEST_SLACK: usize = 32 << 10;
/// The most one request may reserve (work buffer and slack); larger asks are answered
/// `503 over budget` by the request itself.
pub const MAX_REQUEST: usize = (1 << 20) + REQUEST_SLACK;

/// How the service sheds.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Shed at or above this level.
    pub shed_at: PressureLevel,
    /// `false`: no layer at all (to measure what the layer costs, and what happens
    /// without it).
    pub layer: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            shed_at: limited_allocator::tower::DEFAULT_SHED_AT,
            layer: true,
        }
    }
}

/// Parameter `name` (`kib`, `ms`) of a `/work?kib=N&ms=M` query: 0 when absent, the
/// offending `name=value` when it is not a number.
pub fn param<B>(req: &Request<B>, name: &str) -> Result<usize, String> {
    let value = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    });
    match value {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| format!("{name}={v} is not a number")),
    }
}

/// What a `/work` request asks for: bytes to allocate, milliseconds to hold them.
fn work_of<B>(req: &Request<B>) -> Result<(usize, u64), String> {
    let kib = param(req, "kib")?;
    let ms = param(req, "ms")?;
    Ok((kib.saturating_mul(1024), ms.min(10_000) as u64))
}

/// Answers a `/work` request: `400` for a bad query, else [`work`].
async fn answer(asked: Result<(usize, u64), String>) -> Response<Body> {
    match asked {
        Ok((bytes, ms)) => work(bytes, ms).await,
        Err(bad) => text(StatusCode::BAD_REQUEST, format!("{bad}\n")),
    }
}

type SizeFn = fn(&Request<Incoming>) -> usize;

/// Each request reserves what it says it needs, capped at [`MAX_REQUEST`].
/// A bad query reserves only the slack: its answer is a short `400`.
fn request_size(req: &Request<Incoming>) -> usize {
    let bytes = work_of(req).map_or(0, |(bytes, _)| bytes);
    bytes.saturating_add(REQUEST_SLACK).min(MAX_REQUEST)
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The `/work` handler, the inner service of the budget layer.
#[derive(Clone, Copy)]
pub struct Work;

impl Service<Request<Incoming>> for Work {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let asked = work_of(&req);
        Box::pin(async move { Ok(answer(asked).await) })
    }
}

/// Allocates `bytes` fallibly and fills it in four steps with a yield between them, so
/// the request holds its memory across polls (and perhaps worker threads), then holds it
/// `ms` milliseconds more.
async fn work(bytes: usize, ms: u64) -> Response<Body> {
    /// Filled by copying pages (a `memcpy`, quick in debug builds too).
    static PAGES: [[u8; 4096]; 4] = [[1; 4096], [2; 4096], [3; 4096], [4; 4096]];
    let mut buf: Vec<u8> = Vec::new();
    if buf.try_reserve_exact(bytes).is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "over budget\n");
    }
    for (step, page) in PAGES.iter().enumerate() {
        let end = if step == 3 {
            bytes
        } else {
            bytes / 4 * (step + 1)
        };
        while buf.len() < end {
            let n = (end - buf.len()).min(page.len());
            buf.extend_from_slice(&page[..n]);
        }
        tokio::task::yield_now().await;
    }
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // One byte per 512 is enough to read every page back.
    let sum: u64 = buf.iter().step_by(512).map(|&b| u64::from(b)).sum();
    drop(buf);
    text(StatusCode::OK, format!("sum={sum}\n"))
}

/// What [`serve`] hands back when it stops.
#[derive(Debug, Clone)]
pub struct Served {
    /// The per-request numbers.
    pub stats: RequestStats,
}

/// Serves on `listener` until `/quit` or `stop` completes.
pub async fn serve(
    listener: TcpListener,
    alloc: &'static LimitedAllocator,
    settings: Settings,
    stop: impl Future<Output = ()>,
) -> std::io::Result<Served> {
    let monitor = MemoryMonitor::builder()
        .allocator(alloc)
        .interval(Duration::from_millis(100))
        // The allocator's own signal plus RSS against twice its limit; the host's cgroup
        // and PSI are left out so the example behaves the same on a busy machine.
        .max_process_memory(2 * alloc.limit() as u64)
        // High at 90 %, past the allocator's own instant check (80 %): the monitor samples
        // every interval and falls back with hysteresis, so at the same cut it would shed
        // for whole intervals after the allocator has recovered. Here it is the backstop
        // for what the allocator cannot see (RSS).
        .thresholds(PressureThresholds::new(70.0, 90.0, 97.0).expect("valid thresholds"))
        .use_cgroup_limit(false)
        .psi_thresholds(None)
        .start()
        .map_err(std::io::Error::other)?;
    let stats = RequestStats::new();
    let layer = BudgetLayer::new(alloc, REQUEST_SLACK)
        .size_with(request_size as SizeFn)
        .overflow(Overflow::Refuse)
        .shed_at(settings.shed_at)
        .monitor(monitor.handle())
        .stats_into(stats.clone());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(
        PrometheusCollector::new(monitor.handle()).with_requests(stats.clone()),
    ));
    let app = Arc::new(App {
        budget: layer.layer(Work),
        registry,
        layer: settings.layer,
        quit: Notify::new(),
    });
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue, // out of descriptors or the like: the next accept may do
            },
            () = app.quit.notified() => break,
            () = &mut stop => break,
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.route(req).await) }
            });
            // A client that goes away mid-request is not the server's problem.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
    drop(monitor);
    Ok(Served { stats })
}

struct App {
    budget: Budget<Work, std::alloc::System, SizeFn>,
    registry: Registry,
    layer: bool,
    quit: Notify,
}

impl App {
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/work" if self.layer => {
                let mut budget = self.budget.clone();
                match budget.call(req).await {
                    Ok(response) => response,
                    Err(BudgetError::Shed(shed)) => {
                        text(StatusCode::SERVICE_UNAVAILABLE, format!("{shed}\n"))
                    }
                    Err(BudgetError::Inner(never)) => match never {},
                }
            }
            "/work" => answer(work_of(&req)).await,
            "/metrics" => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => text(StatusCode::OK, body),
                    Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
                }
            }
            "/quit" => {
                self.quit.notify_one();
                text(StatusCode::OK, "bye\n")
            }
            _ => text(StatusCode::NOT_FOUND, "try /work?kib=N or /metrics\n"),
        }
    }
}
