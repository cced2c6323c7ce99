//! `GET /metrics`: every registered database's state in the OpenMetrics text format
//! (which Prometheus scrapes), one sample per family and database, labelled
//! `{db="…", namespace="…"}`. Any other path is 404.
//!
//! The families are built afresh at each scrape from the live handles (watermarks, log
//! stats, the monitor's own counters): nothing is updated on the replication path, and a
//! database that stopped simply disappears.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use walvault::{Durability, Error, Result};

use super::{DbState, Monitor};

/// The content type of the OpenMetrics text format `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels of every sample: which database, replicated into which namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    db: String,
    namespace: String,
}

type Gauges = Family<DbLabels, Gauge>;
type SecondsGauges = Family<DbLabels, Gauge<f64, AtomicU64>>;
type Counters = Family<DbLabels, Counter>;

/// Binds `addr` and serves the endpoint in a task of its own.
pub(super) async fn serve(
    monitor: Monitor,
    addr: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding the metrics endpoint to {addr}"), e))?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(TokioIo::new(stream), monitor.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn connection(io: TokioIo<tokio::net::TcpStream>, monitor: Monitor) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = respond(&monitor, &req);
        async move { Ok::<_, Infallible>(response) }
    });
    // The timer lets hyper drop a client that never finishes its request headers.
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "metrics endpoint: connection");
    }
}

fn respond<B>(monitor: &Monitor, req: &Request<B>) -> Response<Full<Bytes>> {
    let metrics = req.uri().path() == "/metrics";
    let (status, content_type, body) = match (metrics, req.method()) {
        (true, &Method::GET | &Method::HEAD) => match exposition(monitor) {
            Ok(text) => (StatusCode::OK, CONTENT_TYPE, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding the metrics failed\n".to_string(),
            ),
        },
        (true, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".to_string(),
        ),
        (false, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; metrics are at /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The families, each with one sample per registered database.
struct Families {
    applied: Gauges,
    written: Gauges,
    durable: Gauges,
    lag: SecondsGauges,
    store_age: SecondsGauges,
    bytes: Counters,
    segments: Counters,
    snapshots: Counters,
    transactions: Counters,
    upload_errors: Counters,
    upload_retries: Counters,
    poll_errors: Counters,
}

impl Families {
    fn new() -> Self {
        Self {
            applied: Gauges::default(),
            written: Gauges::default(),
            durable: Gauges::default(),
            lag: SecondsGauges::default(),
            store_age: SecondsGauges::default(),
            bytes: Counters::default(),
            segments: Counters::default(),
            snapshots: Counters::default(),
            transactions: Counters::default(),
            upload_errors: Counters::default(),
            upload_retries: Counters::default(),
            poll_errors: Counters::default(),
        }
    }

    fn add(&self, db: &DbState) {
        let labels = DbLabels {
            db: db.info.db.display().to_string(),
            namespace: db.info.namespace.clone(),
        };
        let frame = |family: &Gauges, level| {
            let n = i64::try_from(db.watermark(level)).unwrap_or(i64::MAX);
            family.get_or_create(&labels).set(n);
        };
        frame(&self.applied, Durability::Applied);
        frame(&self.written, Durability::Written);
        frame(&self.durable, Durability::Durable);
        let stats = &db.info.stats;
        self.lag
            .get_or_create(&labels)
            .set(stats.lag().as_secs_f64());
        if let Some(age) = stats.since_store_ok() {
            self.store_age.get_or_create(&labels).set(age.as_secs_f64());
        }
        let count = |family: &Counters, n: u64| {
            family.get_or_create(&labels).inc_by(n);
        };
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        count(&self.bytes, stats.bytes_shipped());
        count(&self.segments, stats.segments_shipped());
        count(&self.snapshots, load(&db.snapshots));
        count(&self.transactions, load(&db.transactions));
        count(&self.upload_errors, stats.upload_errors());
        count(&self.upload_retries, stats.upload_retries());
        count(&self.poll_errors, load(&db.poll_errors));
    }

    fn register(self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "applied_frame_no",
            "Last frame number read from the WAL into the local log",
            self.applied,
        );
        r.register(
            "written_frame_no",
            "Last frame number fsynced in the local log",
            self.written,
        );
        r.register(
            "durable_frame_no",
            "Last frame number the store holds",
            self.durable,
        );
        r.register(
            "lag_seconds",
            "Age of the oldest commit read from the WAL that is not durable yet (0 when all is)",
            self.lag,
        );
        r.register(
            "store_last_ok_age_seconds",
            "Seconds since the store last answered successfully (took a segment, or at start)",
            self.store_age,
        );
        r.register(
            "shipped_bytes",
            "Encoded bytes of segments the store took",
            self.bytes,
        );
        r.register("shipped_segments", "Segments the store took", self.segments);
        r.register(
            "snapshots",
            "Snapshots of the whole database shipped",
            self.snapshots,
        );
        r.register(
            "transactions",
            "Transactions read from the WAL",
            self.transactions,
        );
        r.register(
            "upload_errors",
            "Attempts to store a segment that failed",
            self.upload_errors,
        );
        r.register(
            "upload_retries",
            "Attempts to store a segment after a failed attempt",
            self.upload_retries,
        );
        r.register(
            "poll_errors",
            "Polls of the WAL that failed (the daemon retries them)",
            self.poll_errors,
        );
    }
}

/// The text a scrape returns.
fn exposition(monitor: &Monitor) -> std::result::Result<String, std::fmt::Error> {
    let families = Families::new();
    for db in monitor.databases() {
        families.add(&db);
    }
    let mut registry = Registry::with_prefix("walvault");
    families.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_database_has_a_sample_in_every_family() {
        let monitor = Monitor::new();
        assert_eq!(
            exposition(&monitor).unwrap(),
            "# EOF\n",
            "no database, no sample"
        );
        let dir = tempfile::tempdir().unwrap();
        let ns = walvault::NamespaceName::new("app").unwrap();
        let config = walvault::LogConfig::new(dir.path().join("log"));
        let store = walvault::MemoryStorage::new();
        let log = walvault::LogWriter::open(store, ns, config).await.unwrap();
        let db = monitor.register(super::super::DbInfo {
            db: "dir/app.db".into(),
            namespace: "app".into(),
            store_url: "store".into(),
            log_dir: dir.path().join("log"),
            tracker: log.tracker().clone(),
            stats: log.stats().clone(),
        });
        let text = exposition(&monitor).unwrap();
        let labels = r#"{db="dir/app.db",namespace="app"}"#;
        for family in [
            "walvault_applied_frame_no",
            "walvault_written_frame_no",
            "walvault_durable_frame_no",
            "walvault_lag_seconds",
            "walvault_store_last_ok_age_seconds",
            "walvault_shipped_bytes_total",
            "walvault_shipped_segments_total",
            "walvault_snapshots_total",
            "walvault_transactions_total",
            "walvault_upload_errors_total",
            "walvault_upload_retries_total",
            "walvault_poll_errors_total",
        ] {
            assert!(
                text.contains(&format!("{family}{labels} ")),
                "{family}: {text}"
            );
        }
        db.stopped();
        assert_eq!(
            exposition(&monitor).unwrap(),
            "# EOF\n",
            "a stopped database leaves"
        );
        log.close().await.unwrap();
    }

    #[test]
    fn other_paths_are_not_found() {
        let monitor = Monitor::new();
        let get = |path: &str, method| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            respond(&monitor, &req).status()
        };
        assert_eq!(get("/metrics", Method::GET), StatusCode::OK);
        assert_eq!(get("/", Method::GET), StatusCode::NOT_FOUND);
        assert_eq!(get("/metrics/x", Method::GET), StatusCode::NOT_FOUND);
        assert_eq!(
            get("/metrics", Method::POST),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
