//! Prometheus metrics. One owned (non-global) registry; every family is registered here.
//! Labels are bounded: backend ids come from the config, the rest from fixed sets.
//! The request path bumps pre-labelled handles (no label lookups per request).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::traffic::proxy::route::RouteClass;

pub const ROLES: [&str; 5] = ["active", "standby", "promoting", "down", "unmanageable"];
pub const FLOW_STATES: [&str; 4] = ["start", "stop", "safe", "unknown"];
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Every `reason` label of the failover families.
pub const REASONS: [&str; 8] =
    ["initial", "crash", "hang", "unhealthy", "unmanageable", "canary", "switchover", "failback"];
pub const PROBE_FAILURES: [&str; 8] =
    ["refused", "connect", "reset", "timeout", "unauthorized", "runtime_state_disabled", "status", "bad_body"];
pub const FANOUT_RESULTS: [&str; 6] = ["ok", "conflict", "rejected", "diverged", "error", "skipped"];

pub struct Metrics {
    registry: Registry,
    pub backend_up: IntGaugeVec,
    pub backend_role: IntGaugeVec,
    pub backend_flow_state: IntGaugeVec,
    pub instances_running_flows: IntGauge,
    pub active_present: IntGauge,
    pub load_balanced: IntGauge,
    pub failovers: IntCounterVec,
    pub failover_failures: IntCounterVec,
    pub failover_duration: Histogram,
    pub probe_duration: HistogramVec,
    pub probe_failures: IntCounterVec,
    pub stray_starts_stopped: IntCounterVec,
    pub upstream_retries: IntCounter,
    pub inflight_aborted: IntCounter,
    /// Requests forwarded by the HTTP/1.1 fast path, and heads it handed to hyper.
    pub fast_path: IntCounter,
    pub fast_path_handoffs: IntCounter,
    pub websocket_tunnels: IntGauge,
    pub client_connections: IntGauge,
    pub client_connections_parked: IntGauge,
    pub deploys: IntCounterVec,
    pub deploy_fanout: IntCounterVec,
    pub resyncs: IntCounterVec,
    pub backend_in_step: IntGaugeVec,
    pub backend_flapping: IntGaugeVec,
    pub restarts: IntCounterVec,
    pub backend_gave_up: IntGaugeVec,
    pub backend_revision: IntGaugeVec,
    pub promotions_out_of_step: IntCounter,
    pub cluster_controller: IntGauge,
    pub cluster_epoch: IntGauge,
    pub cluster_leadership_changes: IntCounter,
    pub cluster_store_errors: IntCounter,
    pub cluster_fenced: IntCounter,
    pub config_reloads: IntCounterVec,
    pub flow_hazards: IntGaugeVec,
    pub tls_reload_errors: IntCounter,
    pub tls_not_after: IntGaugeVec,
    /// The rev label currently set per backend, so a change replaces the series.
    revisions: std::sync::Mutex<std::collections::HashMap<String, String>>,
    requests: Vec<[IntCounter; 5]>,
    request_duration: Vec<Histogram>,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::build();
        m.init_fixed();
        m
    }

    fn build() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let requests_vec = reg(
            &registry,
            IntCounterVec::new(
                Opts::new("flowgate_requests_total", "Client requests by route class and status class."),
                &["route", "code_class"],
            )
            .unwrap(),
        );
        let duration_vec = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "flowgate_request_duration_seconds",
                    "Time from request received to response head sent, by route class.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["route"],
            )
            .unwrap(),
        );
        let requests = RouteClass::ALL
            .iter()
            .map(|r| CODE_CLASSES.map(|c| requests_vec.with_label_values(&[r.as_str(), c])))
            .collect();
        let request_duration = RouteClass::ALL.iter().map(|r| duration_vec.with_label_values(&[r.as_str()])).collect();
        Metrics {
            backend_up: reg(
                &registry,
                IntGaugeVec::new(Opts::new("flowgate_backend_up", "1 when the instance passes health checks."), &["backend"])
                    .unwrap(),
            ),
            backend_role: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("flowgate_backend_role", "The instance's role, one-hot over role."),
                    &["backend", "role"],
                )
                .unwrap(),
            ),
            backend_flow_state: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("flowgate_backend_flow_state", "The instance's reported flow state, one-hot over state."),
                    &["backend", "state"],
                )
                .unwrap(),
            ),
            instances_running_flows: reg(
                &registry,
                IntGauge::new(
                    "flowgate_instances_running_flows",
                    "Reachable instances reporting flows started; alert when not 1.",
                )
                .unwrap(),
            ),
            active_present: reg(
                &registry,
                IntGauge::new("flowgate_active_present", "1 while an active instance receives traffic.").unwrap(),
            ),
            load_balanced: reg(
                &registry,
                IntGauge::new(
                    "flowgate_load_balanced",
                    "1 in load-balanced mode: every in-step instance runs flows; active_present is 1 while the rotation is not empty.",
                )
                .unwrap(),
            ),
            failovers: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("flowgate_failovers_total", "Completed changes of the active instance, by reason."),
                    &["reason"],
                )
                .unwrap(),
            ),
            failover_failures: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("flowgate_failover_failures_total", "Promotions that did not complete, by reason."),
                    &["reason"],
                )
                .unwrap(),
            ),
            failover_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "flowgate_failover_duration_seconds",
                        "From detection of the failure to traffic switched to the new active.",
                    )
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                )
                .unwrap(),
            ),
            probe_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("flowgate_probe_duration_seconds", "Health probe round trip.")
                        .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                    &["backend"],
                )
                .unwrap(),
            ),
            probe_failures: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("flowgate_probe_failures_total", "Failed health probes by kind."),
                    &["backend", "kind"],
                )
                .unwrap(),
            ),
            stray_starts_stopped: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowgate_stray_starts_stopped_total",
                        "Non-active instances found running flows and stopped.",
                    ),
                    &["backend"],
                )
                .unwrap(),
            ),
            upstream_retries: reg(
                &registry,
                IntCounter::new(
                    "flowgate_upstream_retries_total",
                    "Requests retried on a new active (nothing had been sent, or idempotent and in flight on a failed one).",
                )
                .unwrap(),
            ),
            inflight_aborted: reg(
                &registry,
                IntCounter::new(
                    "flowgate_inflight_aborted_total",
                    "Non-idempotent requests answered 502 because their instance was declared failed.",
                )
                .unwrap(),
            ),
            fast_path: reg(
                &registry,
                IntCounter::new(
                    "flowgate_fast_path_requests_total",
                    "HTTP/1.1 runtime requests forwarded as bytes by the fast path.",
                )
                .unwrap(),
            ),
            fast_path_handoffs: reg(
                &registry,
                IntCounter::new(
                    "flowgate_fast_path_handoffs_total",
                    "Request heads the fast path handed to hyper (editor routes, upgrades, chunked or unusual requests).",
                )
                .unwrap(),
            ),
            websocket_tunnels: reg(
                &registry,
                IntGauge::new("flowgate_websocket_tunnels", "Open websocket tunnels.").unwrap(),
            ),
            client_connections: reg(
                &registry,
                IntGauge::new("flowgate_client_connections", "Open client connections (proxy and HTTPS listeners).")
                    .unwrap(),
            ),
            client_connections_parked: reg(
                &registry,
                IntGauge::new(
                    "flowgate_client_connections_parked",
                    "Idle HTTP/1 client connections holding no buffers until their next request.",
                )
                .unwrap(),
            ),
            deploys: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("flowgate_deploys_total", "Editor deploys by result (ok, rejected, error)."),
                    &["result"],
                )
                .unwrap(),
            ),
            deploy_fanout: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowgate_deploy_fanout_total",
                        "Deploys and admin writes per instance by result (ok, conflict, rejected, error, skipped).",
                    ),
                    &["backend", "result"],
                )
                .unwrap(),
            ),
            resyncs: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("flowgate_resyncs_total", "Instances brought back in step, by result (ok, failed)."),
                    &["backend", "result"],
                )
                .unwrap(),
            ),
            backend_flapping: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flowgate_backend_flapping",
                        "1 while the instance is flapping (down 3 times within 60 s): passed over while another is eligible.",
                    ),
                    &["backend"],
                )
                .unwrap(),
            ),
            restarts: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "flowgate_restarts_total",
                        "Restarts of instances by their restart command, by reason (hang, crash, operator, rolling) and result (ok: back up, stopped and in step; failed).",
                    ),
                    &["backend", "reason", "result"],
                )
                .unwrap(),
            ),
            backend_gave_up: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flowgate_backend_recovery_gave_up",
                        "1 while the instance is left down after recovery.max_restarts restarts within recovery.window (crash loop).",
                    ),
                    &["backend"],
                )
                .unwrap(),
            ),
            backend_in_step: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("flowgate_backend_in_step", "1 when the instance has the target flows and credentials."),
                    &["backend"],
                )
                .unwrap(),
            ),
            backend_revision: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("flowgate_backend_revision_info", "The instance's flows revision (first 12 hex digits)."),
                    &["backend", "rev"],
                )
                .unwrap(),
            ),
            promotions_out_of_step: reg(
                &registry,
                IntCounter::new(
                    "flowgate_promotions_out_of_step_total",
                    "Promotions of an instance that could not be brought in step first (no in-step one existed).",
                )
                .unwrap(),
            ),
            cluster_controller: reg(
                &registry,
                IntGauge::new("flowgate_cluster_controller", "1 while this replica is the controller (replicas).")
                    .unwrap(),
            ),
            cluster_epoch: reg(
                &registry,
                IntGauge::new("flowgate_cluster_epoch", "The epoch of the controller this replica follows or is.")
                    .unwrap(),
            ),
            cluster_leadership_changes: reg(
                &registry,
                IntCounter::new(
                    "flowgate_cluster_leadership_changes_total",
                    "Times this replica became controller or stepped down.",
                )
                .unwrap(),
            ),
            cluster_store_errors: reg(
                &registry,
                IntCounter::new("flowgate_cluster_store_errors_total", "etcd sessions that ended with an error.")
                    .unwrap(),
            ),
            cluster_fenced: reg(
                &registry,
                IntCounter::new(
                    "flowgate_cluster_fenced_total",
                    "Flow-state commands of this replica refused for a stale epoch: by an instance, or not sent because its lease renewal was not fresh.",
                )
                .unwrap(),
            ),
            flow_hazards: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flowgate_flow_hazards",
                        "Nodes of the deployed flows that do not survive a HA mode, by mode (hot-spare, load-balanced) and hazard kind (see flowgate check --flows).",
                    ),
                    &["mode", "kind"],
                )
                .unwrap(),
            ),
            config_reloads: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("flowgate_config_reloads_total", "Configuration reloads by result (ok, rejected)."),
                    &["result"],
                )
                .unwrap(),
            ),
            tls_reload_errors: reg(
                &registry,
                IntCounter::new(
                    "flowgate_tls_reload_errors_total",
                    "Certificates that failed to load; the last good one stays in use.",
                )
                .unwrap(),
            ),
            tls_not_after: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("flowgate_tls_cert_not_after_timestamp_seconds", "Expiry of each served certificate."),
                    &["cert"],
                )
                .unwrap(),
            ),
            revisions: Default::default(),
            requests,
            request_duration,
            registry,
        }
    }

    /// Counts one finished request.
    pub fn request(&self, route: RouteClass, status: u16, seconds: f64) {
        let class = ((status / 100).clamp(1, 5) - 1) as usize;
        self.requests[route as usize][class].inc();
        self.request_duration[route as usize].observe(seconds);
    }

    /// Sets the one-hot gauges of one backend.
    pub fn set_backend(&self, backend: &str, up: bool, role: &str, flow_state: &str) {
        self.backend_up.with_label_values(&[backend]).set(i64::from(up));
        for r in ROLES {
            self.backend_role.with_label_values(&[backend, r]).set(i64::from(r == role));
        }
        for s in FLOW_STATES {
            self.backend_flow_state.with_label_values(&[backend, s]).set(i64::from(s == flow_state));
        }
    }

    /// Creates every labelled series at zero, so dashboards and `increase()` see them from the
    /// start (fixed label sets).
    fn init_fixed(&self) {
        for r in REASONS {
            self.failovers.with_label_values(&[r]);
            self.failover_failures.with_label_values(&[r]);
        }
        for r in ["ok", "rejected", "error"] {
            self.deploys.with_label_values(&[r]);
        }
        for r in ["ok", "rejected"] {
            self.config_reloads.with_label_values(&[r]);
        }
        for mode in crate::readiness::Mode::ALL {
            for kind in crate::readiness::KINDS {
                self.flow_hazards.with_label_values(&[mode.as_str(), kind]);
            }
        }
    }

    /// Creates a backend's labelled series at zero.
    pub fn init_backend(&self, backend: &str) {
        for k in PROBE_FAILURES {
            self.probe_failures.with_label_values(&[backend, k]);
        }
        for r in FANOUT_RESULTS {
            self.deploy_fanout.with_label_values(&[backend, r]);
        }
        for r in ["ok", "failed"] {
            self.resyncs.with_label_values(&[backend, r]);
        }
        for reason in ["hang", "crash"] {
            for r in ["ok", "failed"] {
                self.restarts.with_label_values(&[backend, reason, r]);
            }
        }
        self.stray_starts_stopped.with_label_values(&[backend]);
        self.probe_duration.with_label_values(&[backend]);
    }

    /// Sets the in-step gauge and the revision series of one backend.
    pub fn set_sync(&self, backend: &str, in_step: bool, rev: Option<&str>) {
        self.backend_in_step.with_label_values(&[backend]).set(i64::from(in_step));
        let rev: String = rev.unwrap_or("unknown").chars().take(12).collect();
        let mut seen = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(backend) {
            Some(old) if *old == rev => return,
            Some(old) => {
                let _ = self.backend_revision.remove_label_values(&[backend, old]);
            }
            None => {}
        }
        self.backend_revision.with_label_values(&[backend, &rev]).set(1);
        seen.insert(backend.to_string(), rev);
    }

    /// Drops the per-backend gauges of an instance removed from the config.
    pub fn forget_backend(&self, backend: &str) {
        let _ = self.backend_up.remove_label_values(&[backend]);
        let _ = self.backend_in_step.remove_label_values(&[backend]);
        let _ = self.backend_flapping.remove_label_values(&[backend]);
        let _ = self.backend_gave_up.remove_label_values(&[backend]);
        for r in ROLES {
            let _ = self.backend_role.remove_label_values(&[backend, r]);
        }
        for s in FLOW_STATES {
            let _ = self.backend_flow_state.remove_label_values(&[backend, s]);
        }
        if let Some(rev) = self.revisions.lock().unwrap_or_else(|e| e.into_inner()).remove(backend) {
            let _ = self.backend_revision.remove_label_values(&[backend, &rev]);
        }
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
