//! Prometheus metrics (SPEC section 11): a [`Snapshot`] of what orchd counts, rendered
//! in the Prometheus text exposition format (version 0.0.4) by the
//! `prometheus-client` encoder, and a bounded parser of `GET /metrics` requests
//! ([`http`]).
//!
//! The shell builds a `Snapshot` from its own state on each scrape (pools, instances,
//! and the metrics-only counts it keeps in [`counters::Counters`]), calls [`render`], and writes [`http::response`] to the client through its
//! output buffer. Nothing here does I/O or keeps state between scrapes.
//!
//! Series (labels `pool`, and `instance` where it applies):
//! `orchd_instances{state}`, `orchd_restarts_total`, `orchd_exits_total{cause}`,
//! `orchd_messages_total{result}`, `orchd_inflight`, `orchd_queued`,
//! `orchd_reply_seconds` (histogram), `orchd_health_failures_total`,
//! `orchd_reloads_total{result}`, `orchd_cpu_seconds_total`, `orchd_rss_bytes`.

pub mod counters;
pub mod http;

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The instance states of SPEC section 4, each always present in
/// `orchd_instances{state}` (0 when no instance is in it) so series do not vanish.
pub const STATES: &[&str] = &[
    "starting", "running", "backoff", "stopping", "failed", "stopped",
];

/// Upper bounds (seconds) of the reply latency buckets; `+Inf` is implied.
pub const REPLY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Reply latencies of one pool: the time from when the worker could start on a
/// message (written to it, and the one before answered) to its reply. Fixed buckets,
/// no allocation per observation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyHistogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [u64; REPLY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl ReplyHistogram {
    pub fn observe(&mut self, latency: Duration) {
        self.observe_n(latency, 1);
    }

    /// `n` replies, each taking `latency` (replies read together): one bucket
    /// search, not `n`.
    pub fn observe_n(&mut self, latency: Duration, n: u64) {
        let s = latency.as_secs_f64();
        let i = REPLY_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(REPLY_BUCKETS.len());
        self.counts[i] += n;
        self.sum += s * n as f64;
        self.count += n;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// (upper bound, count in that bucket alone) for every bucket including `+Inf`:
    /// the encoder makes them cumulative.
    fn buckets(&self) -> Vec<(f64, u64)> {
        REPLY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect()
    }
}

/// One instance slot (`pool[index]`). Counters are per slot: they survive restarts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceSnapshot {
    pub index: u32,
    /// One of [`STATES`].
    pub state: &'static str,
    pub restarts: u64,
    /// Exits by cause (`exit-0`, `exit-nonzero`, `signal`, `spawn-error`, `timeout`,
    /// `health`, `max_rss`, ... as the shell names them).
    pub exits: Vec<(String, u64)>,
    pub inflight: u64,
    pub health_failures: u64,
    pub cpu_seconds: f64,
    /// None when unknown (not running, or /proc unreadable): the series is left out.
    pub rss_bytes: Option<u64>,
}

/// One pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSnapshot {
    pub name: String,
    pub instances: Vec<InstanceSnapshot>,
    /// Messages waiting for a free instance.
    pub queued: u64,
    /// Messages by result: `answered`, or the error reason (`no route`, `too long`,
    /// `retries exhausted`, `no instances`, `shutting down`, ...).
    pub messages: Vec<(String, u64)>,
    pub replies: ReplyHistogram,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub pools: Vec<PoolSnapshot>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// The snapshot in the Prometheus text format (version 0.0.4, [`CONTENT_TYPE`]).
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::new();
    // Writing into a String cannot fail; the encoder's own errors would be bugs.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        debug_assert!(false, "encoding metrics failed: {e}");
    }
    out
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Encodes one metric family from (labels, value) samples.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in samples {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One instance slot: pool name, snapshot, index as text.
type Slot<'a> = (&'a str, &'a InstanceSnapshot, String);

/// A family with one sample per instance slot (`pool`, `instance`); slots for which
/// `value` gives None are left out.
fn per_instance<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    slots: &[Slot<'_>],
    value: impl Fn(&InstanceSnapshot) -> Option<M>,
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        kind,
        slots.iter().filter_map(|(p, i, idx)| {
            value(i).map(|m| (vec![("pool", *p), ("instance", idx.as_str())], m))
        }),
    )
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let pools = || s.pools.iter();
        let instances = || {
            pools().flat_map(|p| {
                p.instances
                    .iter()
                    .map(move |i| (p.name.as_str(), i, i.index.to_string()))
            })
        };
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));

        family(
            &mut e,
            "orchd_instances",
            "Instances by state.",
            MetricType::Gauge,
            pools().flat_map(|p| {
                STATES.iter().map(move |&st| {
                    let n = p.instances.iter().filter(|i| i.state == st).count() as u64;
                    (vec![("pool", p.name.as_str()), ("state", st)], gauge(n))
                })
            }),
        )?;
        let inst: Vec<Slot> = instances().collect();
        per_instance(
            &mut e,
            "orchd_restarts",
            "Restarts of each instance slot.",
            MetricType::Counter,
            &inst,
            |i| Some(ConstCounter::new(i.restarts)),
        )?;
        family(
            &mut e,
            "orchd_exits",
            "Exits of each instance slot by cause.",
            MetricType::Counter,
            inst.iter().flat_map(|(p, i, idx)| {
                i.exits.iter().map(move |(cause, n)| {
                    (
                        vec![
                            ("pool", *p),
                            ("instance", idx.as_str()),
                            ("cause", cause.as_str()),
                        ],
                        ConstCounter::new(*n),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "orchd_messages",
            "Messages by result: answered, or the error reason.",
            MetricType::Counter,
            pools().flat_map(|p| {
                p.messages.iter().map(move |(result, n)| {
                    (
                        vec![("pool", p.name.as_str()), ("result", result.as_str())],
                        ConstCounter::new(*n),
                    )
                })
            }),
        )?;
        per_instance(
            &mut e,
            "orchd_inflight",
            "Messages written to an instance and not yet answered.",
            MetricType::Gauge,
            &inst,
            |i| Some(gauge(i.inflight)),
        )?;
        family(
            &mut e,
            "orchd_queued",
            "Messages waiting for a free instance.",
            MetricType::Gauge,
            pools().map(|p| (vec![("pool", p.name.as_str())], gauge(p.queued))),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "orchd_reply_seconds",
                "Time from when a worker could start on a message to its reply.",
                None,
                MetricType::Histogram,
            )?;
            for p in pools() {
                let labels: Labels = vec![("pool", p.name.as_str())];
                let h = &p.replies;
                metric.encode_family(&labels)?.encode_histogram::<Labels>(
                    h.sum,
                    h.count,
                    &h.buckets(),
                    None,
                )?;
            }
        }
        per_instance(
            &mut e,
            "orchd_health_failures",
            "Failed health probes of each instance slot.",
            MetricType::Counter,
            &inst,
            |i| Some(ConstCounter::new(i.health_failures)),
        )?;
        family(
            &mut e,
            "orchd_reloads",
            "Config reloads by result.",
            MetricType::Counter,
            [("ok", s.reloads_ok), ("failed", s.reloads_failed)]
                .into_iter()
                .map(|(r, n)| (vec![("result", r)], ConstCounter::new(n))),
        )?;
        per_instance(
            &mut e,
            "orchd_cpu_seconds",
            "CPU time (user + system) of each instance's current process.",
            MetricType::Counter,
            &inst,
            |i| Some(ConstCounter::new(i.cpu_seconds)),
        )?;
        per_instance(
            &mut e,
            "orchd_rss_bytes",
            "Resident set size of each running instance.",
            MetricType::Gauge,
            &inst,
            |i| i.rss_bytes.map(gauge),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
