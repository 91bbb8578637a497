//! `docs/benchmarks.md`: the figures of one run with the machine, the
//! versions, the limits, the exact command, and each goal met or not.
//! Written whole from [`Results`]; nothing in it is edited by hand except
//! the analysis, which is kept in `crates/fanout-bench/src/ANALYSIS.md` and included
//! as it is.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::options;
use crate::results::{
    ControllerDelta, InstallRun, QuietWindow, RequestCount, Results, ThroughputRun,
};
use crate::stats::{duration, median, mib};

/// Goal: Fanout time over baseline time, at every N.
const RATIO_GOAL: f64 = 1.15;
/// Goal: peak RSS, MiB (at most).
const RSS_GOAL_MIB: f64 = 32.0;
/// Goal: Fanout time over baseline time with no client-side limit, at 5,000 namespaces.
const UNLIMITED_GOAL: f64 = 1.10;
/// The size the no-client-limit goal is judged at.
const UNLIMITED_GOAL_N: usize = 5_000;
/// Goal: control-plane CPU per copy, Fanout over baseline, at each fixed limit.
const CPU_GOAL: f64 = 1.10;
/// Goal: start to ready after the API server answers, seconds.
const READY_GOAL: f64 = 2.0;
/// Goal: leader SIGTERM to the standby's first reconcile, seconds.
const HANDOVER_GOAL: f64 = 1.0;
/// RSS growth still counted as "no growth" (allocator noise), MiB.
const GROWTH_TOLERANCE_MIB: f64 = 2.0;

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The Markdown report; `chart` is the SVG's path relative to the report,
/// `analysis` the hand-written findings.
pub fn markdown(results: &Results, chart: Option<&str>, analysis: Option<&str>) -> String {
    let mut s = String::new();
    header(&mut s, results);
    goals(&mut s, results);
    if let Some(analysis) = analysis {
        let _ = writeln!(s, "{}\n", analysis.trim());
    }
    throughput(&mut s, results, chart);
    unlimited(&mut s, results);
    status_writes(&mut s, results);
    memory(&mut s, results);
    startup(&mut s, results);
    drain(&mut s, results);
    handover(&mut s, results);
    cpu(&mut s, results);
    idle(&mut s, results);
    failover(&mut s, results);
    blocked(&mut s, results);
    default_install(&mut s, results);
    scale(&mut s, results);
    s
}

fn header(s: &mut String, r: &Results) {
    let m = &r.machine;
    let v = &r.versions;
    let shape = &r.shape;
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `scripts/bench` on {} ({} mode, {} repeat(s) per figure, medians reported; \
         the run took {:.0} min). Do not edit by hand: run it again.\n",
        r.date,
        if shape.quick { "quick" } else { "full" },
        shape.repeats,
        r.wall_seconds / 60.0
    );
    let _ = writeln!(s, "Command:\n\n```sh\n{}\n```\n", r.command);
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| machine | {} CPUs ({}), {:.1} GiB memory, {} |",
        m.cpus,
        m.cpu_model,
        m.memory_kib as f64 / 1024.0 / 1024.0,
        m.kernel
    );
    let _ = writeln!(
        s,
        "| load average at start | {} (the machine is shared: figures are medians, goals are ratios to a baseline of the same run) |",
        m.load_at_start
    );
    let _ = writeln!(
        s,
        "| fanout | `{}`, commit {} (release build) |",
        v.fanout, v.commit
    );
    let _ = writeln!(s, "| rustc | `{}` |", v.rustc);
    let _ = writeln!(
        s,
        "| control plane | {} (tools/versions.env) |",
        v.tools.join(", ")
    );
    let _ = writeln!(
        s,
        "| cluster | private `scripts/testbed`: etcd (`--unsafe-no-fsync`) + kube-apiserver on loopback, no kubelet; \
         controller and baseline both use the admin identity (group `system:masters`, exempt from API Priority and Fairness), except in section 11 (the chart's ServiceAccount); every controller has its own `--identity`, so the API server's audit log (`scripts/testbed`: Leases, Secrets, ConfigMaps, Fanouts) tells its requests apart by user agent |"
    );
    let _ = writeln!(
        s,
        "| limits | controller: `--kube-qps {q} --kube-burst {b} --fanout-concurrency {c} --status-interval {i}ms`; \
         baseline: the same QPS/burst (the same `kube_lifecycle::ratelimit::RateLimitLayer`) and {c} requests in flight |\n",
        q = shape.kube_qps,
        b = shape.kube_burst,
        c = shape.fanout_concurrency,
        i = shape.status_interval_ms
    );
}

fn by_size(runs: &[ThroughputRun]) -> BTreeMap<usize, Vec<&ThroughputRun>> {
    let mut sizes: BTreeMap<usize, Vec<&ThroughputRun>> = BTreeMap::new();
    for run in runs {
        sizes.entry(run.n).or_default().push(run);
    }
    sizes
}

fn goals(s: &mut String, r: &Results) {
    let _ = writeln!(s, "## Goals\n\n| goal | this run | |\n|---|---|---|");
    let sizes = by_size(&r.throughput);
    if !sizes.is_empty() {
        let ratios: Vec<(usize, f64)> = sizes
            .iter()
            .filter_map(|(n, runs)| Some((*n, median(runs.iter().map(|r| r.ratio()))?)))
            .collect();
        let worst = ratios.iter().map(|(_, q)| *q).fold(0.0, f64::max);
        let text: Vec<String> = ratios
            .iter()
            .map(|(n, q)| format!("{q:.2}x at {n}"))
            .collect();
        let _ = writeln!(
            s,
            "| fan-out within {RATIO_GOAL}x of the baseline at every N | {} | {} |",
            text.join(", "),
            verdict(worst <= RATIO_GOAL)
        );
        let unlimited: Vec<(usize, f64)> = by_size(&r.throughput_unlimited)
            .iter()
            .filter_map(|(n, runs)| Some((*n, median(runs.iter().map(|r| r.ratio()))?)))
            .collect();
        if !unlimited.is_empty() {
            let judged = unlimited
                .iter()
                .find(|(n, _)| *n == UNLIMITED_GOAL_N)
                .or(unlimited.last())
                .copied();
            let text: Vec<String> = unlimited
                .iter()
                .map(|(n, q)| format!("{q:.2}x at {n}"))
                .collect();
            let _ = writeln!(
                s,
                "| fan-out at {} namespaces with no client-side limit within {UNLIMITED_GOAL:.2}x of the baseline | {} | {} |",
                thousands(UNLIMITED_GOAL_N),
                text.join(", "),
                match judged {
                    Some((n, q)) if n == UNLIMITED_GOAL_N => verdict(q <= UNLIMITED_GOAL),
                    _ => "not measured at 5,000",
                }
            );
        }
        let status_n = r.shape.status_size;
        if let Some(writes) = median(
            r.throughput
                .iter()
                .filter(|t| t.n == status_n)
                .map(|t| t.status_changes as f64),
        ) {
            let _ = writeln!(
                s,
                "| status writes per Fanout at {status_n} namespaces: a few, set by `--status-interval`, not one per target | {writes:.0} | {} |",
                verdict(writes < status_n as f64 / 10.0)
            );
        }
    }
    if let Some(mem) = &r.memory {
        let peak = mem
            .steps
            .iter()
            .map(|st| st.peak_rss_kib)
            .max()
            .unwrap_or(0) as f64;
        let _ = writeln!(
            s,
            "| peak RSS at most {RSS_GOAL_MIB} MiB ({} Fanouts, {} copies) | {} | {} |",
            mem.fanouts,
            thousands(mem.fanouts * mem.per_fanout),
            mib(peak),
            verdict(peak / 1024.0 <= RSS_GOAL_MIB)
        );
        if let (Some(first), Some(last)) = (mem.steps.first(), mem.steps.last()) {
            let growth = (last.peak_rss_kib as f64 - first.peak_rss_kib as f64) / 1024.0;
            let idle = mem
                .idle
                .as_ref()
                .map(|i| (i.after_kib as f64 - i.before_kib as f64) / 1024.0);
            let worst = growth.max(idle.unwrap_or(0.0));
            let _ = writeln!(
                s,
                "| no growth with unrelated Secrets ({} → {}) | peak {:+.1} MiB{} | {} |",
                first.unrelated,
                last.unrelated,
                growth,
                idle.map(|g| format!("; running controller {g:+.1} MiB"))
                    .unwrap_or_default(),
                verdict(worst <= GROWTH_TOLERANCE_MIB)
            );
        }
    }
    if let Some(start) = &r.startup {
        let from_api = start
            .runs
            .iter()
            .filter_map(|run| run.api_answering_to_ready_seconds)
            .next();
        let from_spawn = median(
            start
                .runs
                .iter()
                .filter(|run| run.api_answering_to_ready_seconds.is_none())
                .map(|run| run.to_ready_seconds),
        );
        let worst = from_api.unwrap_or(0.0).max(from_spawn.unwrap_or(0.0));
        let _ = writeln!(
            s,
            "| start to ready under {READY_GOAL} s with {} converged Fanouts | {} from spawn{} | {} |",
            start.fanouts,
            from_spawn.map(duration).unwrap_or_else(|| "-".into()),
            from_api
                .map(|t| format!(", {} from the API server answering", duration(t)))
                .unwrap_or_default(),
            verdict(worst < READY_GOAL)
        );
    }
    if !r.drain.is_empty() {
        let exit = median(r.drain.iter().map(|d| d.to_exit_seconds)).unwrap_or(f64::NAN);
        let pending = median(r.drain.iter().map(|d| f64::from(d.pending))).unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| drain: SIGTERM mid-fan-out to exit (no goal set; every unfinished target reported Pending) | {}, {pending:.0} of {} left Pending | — |",
            duration(exit),
            r.drain[0].n
        );
    }
    if !r.handover.is_empty() {
        let t = median(r.handover.iter().map(|h| h.to_first_reconcile_seconds)).unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| handover under {HANDOVER_GOAL} s (leader SIGTERM → standby's first reconcile) | {} | {} |",
            duration(t),
            verdict(t < HANDOVER_GOAL)
        );
    }
    new_goals(s, r);
    s.push('\n');
}

/// The goals of sections 7-12.
fn new_goals(s: &mut String, r: &Results) {
    if !r.cpu.is_empty() {
        let ratios: Vec<(u32, f64)> = r
            .cpu
            .iter()
            .filter_map(|series| Some((series.limits.qps, cpu_ratio(&series.runs)?)))
            .collect();
        let text: Vec<String> = ratios
            .iter()
            .map(|(qps, q)| format!("{q:.2}x at {qps} QPS"))
            .collect();
        let _ = writeln!(
            s,
            "| control-plane CPU (kube-apiserver + etcd) per 1,000 copies within {CPU_GOAL:.2}x of the baseline at the same limit | {} | {} |",
            text.join(", "),
            verdict(!ratios.is_empty() && ratios.iter().all(|(_, q)| *q <= CPU_GOAL))
        );
    }
    if let Some(idle) = &r.idle {
        let w = &idle.window;
        let quiet = Quiet::of(w);
        let _ = writeln!(
            s,
            "| idle ({} Fanouts × {} targets, converged, nothing changing): only Lease renewals | {:.1} requests/min: {:.1} on Leases, {:.1} other{} | {} |",
            thousands(idle.fanouts),
            idle.targets_per_fanout,
            w.per_minute(w.controller.requests()),
            w.per_minute(quiet.lease as f64),
            w.per_minute(quiet.other as f64),
            quiet.detail(w),
            verdict(quiet.only_lease())
        );
    }
    if let Some(f) = &r.failover {
        let writes = audit_total(&f.writes);
        let _ = writeln!(
            s,
            "| reconcile-all after a failover ({} Fanouts, leader {}): no writes | {writes} writes (audit), {:.0} target writes (metrics); leader {} after the kill, every Fanout reconciled {} later, {:.0} requests | {} |",
            thousands(f.fanouts),
            f.signal,
            f.controller.writes(),
            duration(f.to_leader_seconds),
            duration(f.leader_to_reconciled_seconds),
            f.controller.requests(),
            verdict(writes == 0 && f.controller.writes() == 0.0)
        );
    }
    if let Some(b) = &r.blocked {
        let w = &b.window;
        let quiet = Quiet::of(w);
        // Judged on the audited resources (what blocked targets involve:
        // Secrets, ConfigMaps, Fanouts); what the audit policy leaves out
        // is the idle baseline of section 8, shown.
        let _ = writeln!(
            s,
            "| {} blocked targets: no requests while blocked beyond the watches (and the Lease) | {:.1} requests/min on Secrets, ConfigMaps, Fanouts{} | {} |",
            thousands(b.targets),
            w.per_minute(quiet.other as f64),
            quiet.detail(w),
            verdict(quiet.other == quiet.watches)
        );
        let _ = writeln!(
            s,
            "| {} blocked targets: time to converge once the blockers are deleted (no goal set) | {} after the last delete | — |",
            thousands(b.targets),
            duration(b.to_synced_seconds)
        );
    }
    if !r.default_install.is_empty() {
        let mut text = Vec::new();
        for (n, runs) in install_by_size(&r.default_install) {
            let t = median(runs.iter().map(|r| r.fanout_seconds)).unwrap_or(f64::NAN);
            let q = median(runs.iter().map(|r| r.ratio())).unwrap_or(f64::NAN);
            text.push(format!(
                "{}: {} ({q:.2}x the baseline), bound by {}",
                thousands(n),
                duration(t),
                runs[0].bound
            ));
        }
        let _ = writeln!(
            s,
            "| fan-out as a default install runs it (chart ServiceAccount, default flags): which limit binds | {} | — |",
            text.join("; ")
        );
    }
    if let Some(sc) = &r.scale {
        let _ = writeln!(
            s,
            "| start to ready and to converged, {} Fanouts × {} namespaces ({} copies; no goal set) | from nothing: {} to all Synced, peak {}; restart: ready {}, every Fanout reconciled {}, peak {}, {} writes | — |",
            thousands(sc.fanouts),
            sc.per_fanout,
            thousands(sc.fanouts * sc.per_fanout),
            duration(sc.converge_seconds),
            mib(sc.converge_peak_rss_kib as f64),
            duration(sc.restart.to_ready_seconds),
            duration(sc.restart.to_reconciled_seconds),
            mib(sc.restart_peak_rss_kib as f64),
            audit_total(&sc.restart_writes)
        );
    }
}

/// A quiet window's requests split: Lease, watch re-opens, the rest, and
/// what the controller counted but the audit policy does not record.
struct Quiet {
    lease: u64,
    watches: u64,
    other: u64,
    unaudited: f64,
    /// The same, by HTTP method.
    unaudited_by_method: Vec<(&'static str, f64)>,
}

/// The HTTP method of an audit verb.
fn method_of(verb: &str) -> &'static str {
    match verb {
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" | "deletecollection" => "DELETE",
        _ => "GET",
    }
}

impl Quiet {
    fn of(w: &QuietWindow) -> Quiet {
        let lease = audit_sum(&w.audit, |c| c.resource == "leases");
        let watches = audit_sum(&w.audit, |c| c.resource != "leases" && c.verb == "watch");
        let other = audit_sum(&w.audit, |c| c.resource != "leases");
        let audited = audit_sum(&w.audit, |_| true) as f64;
        let unaudited_by_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
            .into_iter()
            .map(|method| {
                let audited = audit_sum(&w.audit, |c| method_of(&c.verb) == method) as f64;
                (
                    method,
                    (w.controller.requests_of(method) - audited).max(0.0),
                )
            })
            .filter(|(_, n)| *n >= 1.0)
            .collect();
        Quiet {
            lease,
            watches,
            other,
            unaudited: (w.controller.requests() - audited).max(0.0),
            unaudited_by_method,
        }
    }

    /// Met: nothing but Lease requests and watch re-opens, and nothing
    /// outside the audit policy.
    fn only_lease(&self) -> bool {
        self.other == self.watches && self.unaudited < 1.0
    }

    fn detail(&self, w: &QuietWindow) -> String {
        let mut parts = Vec::new();
        if self.watches > 0 {
            parts.push(format!(
                "of which {:.1} watch re-opens",
                w.per_minute(self.watches as f64)
            ));
        }
        if self.unaudited >= 1.0 {
            let methods: Vec<String> = self
                .unaudited_by_method
                .iter()
                .map(|(method, n)| format!("{method} {:.1}", w.per_minute(*n)))
                .collect();
            parts.push(format!(
                "{:.1} on what the audit policy leaves out, by method: {}",
                w.per_minute(self.unaudited),
                methods.join(", ")
            ));
        }
        let other: Vec<String> = w
            .audit
            .iter()
            .filter(|c| c.resource != "leases" && c.verb != "watch")
            .map(|c| {
                format!(
                    "{} {} {:.1}",
                    c.verb,
                    c.resource,
                    w.per_minute(c.count as f64)
                )
            })
            .collect();
        if !other.is_empty() {
            parts.push(format!("per min: {}", other.join(", ")));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join("; "))
        }
    }
}

fn audit_sum(counts: &[RequestCount], keep: impl Fn(&RequestCount) -> bool) -> u64 {
    counts.iter().filter(|c| keep(c)).map(|c| c.count).sum()
}

fn audit_total(counts: &[RequestCount]) -> u64 {
    audit_sum(counts, |_| true)
}

/// The median over repeats of control-plane CPU, Fanout over baseline.
fn cpu_ratio(runs: &[ThroughputRun]) -> Option<f64> {
    median(runs.iter().filter_map(|r| {
        Some(r.fanout_control_plane_cpu_seconds? / r.baseline_control_plane_cpu_seconds?)
    }))
}

fn install_by_size(runs: &[InstallRun]) -> BTreeMap<usize, Vec<&InstallRun>> {
    let mut sizes: BTreeMap<usize, Vec<&InstallRun>> = BTreeMap::new();
    for run in runs {
        sizes.entry(run.n).or_default().push(run);
    }
    sizes
}

fn throughput(s: &mut String, r: &Results, chart: Option<&str>) {
    if r.throughput.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## 1. Fan-out throughput\n\n\
         One Secret into N consenting namespaces (selected by a label). **Fanout**: a fresh controller, \
         ready and leader, with a full token bucket; timed from the create of the Fanout to the first \
         status with `summary.synced == N` seen through a watch. **Baseline**: the same N creates of the \
         same Secret (same data, labels and annotations of the same size) by a plain kube client loop, \
         no controller. Each repeat runs both back to back (alternating which goes first) into namespaces \
         holding no copy yet. Ratio = Fanout / baseline within a repeat, median over repeats; \
         \"Fanout - baseline\" likewise the median of the per-repeat differences.\n"
    );
    if let Some(chart) = chart {
        let _ = writeln!(s, "![time to all Synced against N]({chart})\n");
    }
    throughput_table(
        s,
        &r.throughput,
        Some((r.shape.kube_qps, r.shape.kube_burst)),
    );
    cpu_table(s, &r.throughput);
    if let Some(largest) = r
        .throughput
        .iter()
        .filter(|t| t.repeat == 0)
        .max_by_key(|t| t.n)
    {
        let _ = writeln!(
            s,
            "\nAPI requests counted by the API server (`apiserver_request_total`) during the N = {} runs \
             of the first repeat (Fanout: from its create until its last status write settled; the \
             controller's start-up is not in the window):\n",
            largest.n
        );
        requests_table(
            s,
            &[
                ("Fanout", &largest.fanout_requests),
                ("baseline", &largest.baseline_requests),
            ],
        );
    }
    let peaks: Vec<String> = by_size(&r.throughput)
        .iter()
        .filter_map(|(n, runs)| {
            Some(format!(
                "{} at N = {n}",
                mib(median(runs.iter().map(|r| r.peak_rss_kib as f64))?)
            ))
        })
        .collect();
    let _ = writeln!(
        s,
        "\nController peak RSS during these fan-outs: {}.\n",
        peaks.join(", ")
    );
}

/// One row per N; `floor` is the (qps, burst) limit whose floor is shown.
fn throughput_table(s: &mut String, runs: &[ThroughputRun], floor: Option<(u32, u32)>) {
    let _ = writeln!(
        s,
        "| N | baseline | Fanout | ratio | Fanout - baseline | copies/s baseline | copies/s Fanout |{} ratios per repeat |\n\
         |---:|---:|---:|---:|---:|---:|---:|{}---|",
        if floor.is_some() {
            " floor (N - burst)/QPS |"
        } else {
            ""
        },
        if floor.is_some() { "---:|" } else { "" },
    );
    for (n, runs) in by_size(runs) {
        let b = median(runs.iter().map(|r| r.baseline_seconds)).unwrap_or(f64::NAN);
        let f = median(runs.iter().map(|r| r.fanout_seconds)).unwrap_or(f64::NAN);
        let q = median(runs.iter().map(|r| r.ratio())).unwrap_or(f64::NAN);
        let gap =
            median(runs.iter().map(|r| r.fanout_seconds - r.baseline_seconds)).unwrap_or(f64::NAN);
        let each: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.ratio())).collect();
        let floor = floor
            .map(|(qps, burst)| {
                format!(
                    " {} |",
                    duration(n.saturating_sub(burst as usize) as f64 / f64::from(qps))
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {q:.2}x | {:+.0} ms | {:.0} | {:.0} |{floor} {} |",
            duration(b),
            duration(f),
            gap * 1000.0,
            n as f64 / b,
            n as f64 / f,
            each.join(", ")
        );
    }
}

/// CPU per 1,000 copies: the client loop (the bench process) or the
/// controller, and kube-apiserver + etcd while each ran.
fn cpu_table(s: &mut String, runs: &[ThroughputRun]) {
    let _ = writeln!(
        s,
        "\nCPU time per 1,000 copies (medians): the baseline's client loop (the bench process) against the \
         controller process, and kube-apiserver + etcd during each:\n\n\
         | N | client loop | controller | control plane, baseline | control plane, Fanout |\n\
         |---:|---:|---:|---:|---:|"
    );
    for (n, runs) in by_size(runs) {
        let per_1000 = |pick: &dyn Fn(&ThroughputRun) -> Option<f64>| {
            median(runs.iter().filter_map(|r| pick(r)))
                .map(|cpu| duration(cpu * 1000.0 / n as f64))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} |",
            per_1000(&|r| Some(r.baseline_cpu_seconds)),
            per_1000(&|r| Some(r.fanout_cpu_seconds)),
            per_1000(&|r| r.baseline_control_plane_cpu_seconds),
            per_1000(&|r| r.fanout_control_plane_cpu_seconds),
        );
    }
}

fn unlimited(s: &mut String, r: &Results) {
    if r.throughput_unlimited.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "### 1b. Against the API server's own limit\n\n\
         The same runs with no client-side limit on either side (the controller with `--kube-qps {}`, \
         which leaves the rate-limit layer out of its client; the baseline's client without it): the API \
         server (sharing the 2 cores with etcd, the controller and the bench) is the limit, and the \
         controller's own CPU time competes with it.\n",
        options::Limits::NONE.qps
    );
    throughput_table(s, &r.throughput_unlimited, None);
    cpu_table(s, &r.throughput_unlimited);
    if let Some(largest) = r
        .throughput_unlimited
        .iter()
        .filter(|t| t.repeat == 0)
        .max_by_key(|t| t.n)
    {
        let _ = writeln!(
            s,
            "\nAPI requests during the N = {} runs of the first repeat:\n",
            largest.n
        );
        requests_table(
            s,
            &[
                ("Fanout", &largest.fanout_requests),
                ("baseline", &largest.baseline_requests),
            ],
        );
    }
    s.push('\n');
}

fn requests_table(s: &mut String, columns: &[(&str, &[RequestCount])]) {
    let mut rows: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (i, (_, counts)) in columns.iter().enumerate() {
        for c in counts.iter() {
            rows.entry((c.resource.clone(), c.verb.clone()))
                .or_insert_with(|| vec![0; columns.len()])[i] = c.count;
        }
    }
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(s, "| resource | verb | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---:|".repeat(columns.len()));
    for ((resource, verb), counts) in rows {
        let counts: Vec<String> = counts.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "| {resource} | {verb} | {} |", counts.join(" | "));
    }
}

fn status_writes(s: &mut String, r: &Results) {
    if r.throughput.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## 2. Status writes per Fanout\n\n\
         Status versions seen through a watch on the Fanout during its fan-out (each a status write that \
         changed something), and the writes to `fanouts/status` the API server counted in the same \
         window. The controller publishes a snapshot per finished target and writes the latest at most \
         once per `--status-interval` ({} ms here), plus the final one.\n",
        r.shape.status_interval_ms
    );
    let _ = writeln!(
        s,
        "| N | status versions (median) | status requests (median) | fan-out time | per repeat (versions) |\n|---:|---:|---:|---:|---|"
    );
    for (n, runs) in by_size(&r.throughput) {
        let each: Vec<String> = runs.iter().map(|r| r.status_changes.to_string()).collect();
        let _ = writeln!(
            s,
            "| {n}{} | {:.0} | {:.0} | {} | {} |",
            if n == r.shape.status_size {
                " (goal)"
            } else {
                ""
            },
            median(runs.iter().map(|r| r.status_changes as f64)).unwrap_or(f64::NAN),
            median(runs.iter().map(|r| r.status_requests as f64)).unwrap_or(f64::NAN),
            duration(median(runs.iter().map(|r| r.fanout_seconds)).unwrap_or(f64::NAN)),
            each.join(", ")
        );
    }
    s.push('\n');
}

fn memory(s: &mut String, r: &Results) {
    let Some(mem) = &r.memory else { return };
    let _ = writeln!(
        s,
        "## 3. Memory\n\n\
         {} Fanouts over {} namespaces: namespace groups of {} selected by label, {} Fanouts per group, \
         each with its own source: {} copies in all. The cluster holds {} namespaces (the controller \
         caches the metadata of all of them). Each step: a fresh controller does the whole fan-out; its \
         peak RSS (`VmHWM` from `/proc/<pid>/status`) and RSS are read {} s after all are Synced; then the \
         copies are deleted. Unrelated Secrets: 1 KiB each, spread over the target namespaces, created \
         by a fast client loop.\n",
        mem.fanouts,
        mem.namespaces,
        mem.per_fanout,
        (mem.fanouts * mem.per_fanout / mem.namespaces.max(1)).max(1),
        mem.fanouts * mem.per_fanout,
        mem.namespaces_in_cluster,
        3
    );
    let _ = writeln!(
        s,
        "| unrelated Secrets | copies | fan-out time | peak RSS | RSS after |\n|---:|---:|---:|---:|---:|"
    );
    for st in &mem.steps {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            st.unrelated,
            st.copies,
            duration(st.seconds),
            mib(st.peak_rss_kib as f64),
            mib(st.rss_kib as f64)
        );
    }
    if let Some(idle) = &mem.idle {
        let _ = writeln!(
            s,
            "\nThe first step's controller, converged and still running while {} more unrelated Secrets were \
             created: RSS {} before, {} after (peak {}).",
            idle.added,
            mib(idle.before_kib as f64),
            mib(idle.after_kib as f64),
            mib(idle.peak_after_kib as f64)
        );
    }
    s.push('\n');
}

fn startup(s: &mut String, r: &Results) {
    let Some(start) = &r.startup else { return };
    let _ = writeln!(
        s,
        "## 4. Start to ready\n\n\
         {} converged Fanouts in one namespace, each with its own source Secret and one target namespace \
         (a start then reads {n} sources and checks {n} targets). Each start is \
         a fresh process; `/readyz?verbose` polled every 5 ms, ready = the first 200 that lists the controller's \
         `crd-served` and `caches-synced` checks passing. The last start is made through testkit's fault proxy \
         (TLS terminated, requests forwarded with the same admin identity), which holds every request unanswered \
         until 1 s after the process listens, then forwards: \"from the API server answering\" is timed from \
         then.\n",
        start.fanouts,
        n = thousands(start.fanouts),
    );
    let _ = writeln!(
        s,
        "| start | to `/readyz` 200 | to leader | to every Fanout reconciled |\n|---|---:|---:|---:|"
    );
    for (i, run) in start.runs.iter().enumerate() {
        let what = match run.api_answering_to_ready_seconds {
            Some(t) => format!(
                "through the proxy: {} from the API server answering",
                duration(t)
            ),
            None => format!("{}: from spawn", i + 1),
        };
        let _ = writeln!(
            s,
            "| {what} | {} | {} | {} |",
            duration(run.to_ready_seconds),
            duration(run.to_leader_seconds),
            duration(run.to_reconciled_seconds)
        );
    }
    let premature: Vec<String> = start
        .runs
        .iter()
        .filter_map(|run| run.premature_200_seconds)
        .map(duration)
        .collect();
    if !premature.is_empty() {
        let _ = writeln!(
            s,
            "\n**A premature 200**: `/readyz` answered 200 {} after spawn in {} of {} starts, before the \
             controller had registered its `crd-served` and `caches-synced` checks (only the admin \
             self-ping was listed). The times above are to the first 200 that lists both checks passing.",
            premature.join(", "),
            premature.len(),
            start.runs.len()
        );
    }
    let _ = writeln!(
        s,
        "\nAPI requests of the first start, from spawn until every Fanout was reconciled \
         (`apiserver_request_total`; watches still open then from `apiserver_longrunning_requests`; \
         the API server's own background requests in that window are included):\n"
    );
    requests_table(
        s,
        &[
            ("requests", &start.requests),
            ("open watches", &start.watches),
        ],
    );
    s.push('\n');
}

fn drain(s: &mut String, r: &Results) {
    if r.drain.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## 5. Drain\n\n\
         SIGTERM to the controller half-way through a {}-namespace fan-out (half the median fan-out time \
         of section 1). Timed from the signal to the process's exit; the Fanout's final status (written by \
         the drain) and the copies that exist afterwards are counted.\n",
        r.drain[0].n
    );
    let _ = writeln!(
        s,
        "| run | SIGTERM after | to exit | exit code | Synced | Pending | other | copies present |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, d) in r.drain.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            duration(d.signal_after_seconds),
            duration(d.to_exit_seconds),
            d.exit_code.map_or("signal".into(), |c| c.to_string()),
            d.synced,
            d.pending,
            d.other,
            d.copies
        );
    }
    let _ = writeln!(
        s,
        "\nEvery copy present and Synced in the final status is what \"nothing lost\" means here: a copy \
         written but reported Pending would show as copies present > Synced.\n"
    );
}

fn handover(s: &mut String, r: &Results) {
    if r.handover.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## 6. Handover\n\n\
         Two processes on one Lease (`--lease-duration` 15 s default), {} converged Fanouts. SIGTERM to \
         the leader; the standby's `/metrics` scraped every 2 ms. Each repeat starts a new standby behind \
         the previous winner.\n",
        r.shape.handover_fanouts
    );
    let _ = writeln!(
        s,
        "| run | leader exited | standby `fanout_leader` 1 | standby's first reconcile |\n|---:|---:|---:|---:|"
    );
    for (i, h) in r.handover.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            i + 1,
            duration(h.leader_exit_seconds),
            duration(h.to_leader_seconds),
            duration(h.to_first_reconcile_seconds)
        );
    }
    s.push('\n');
}

/// `n` with thousands separators (`1,000`).
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table of counts by resource and verb, with a per-minute column when
/// `seconds` is given.
fn counts_table(s: &mut String, counts: &[RequestCount], seconds: Option<f64>) {
    if counts.is_empty() {
        let _ = writeln!(s, "(none)\n");
        return;
    }
    let mut rows: Vec<&RequestCount> = counts.iter().collect();
    rows.sort_by(|a, b| (&a.resource, &a.verb).cmp(&(&b.resource, &b.verb)));
    match seconds {
        Some(_) => {
            let _ = writeln!(
                s,
                "| resource | verb | requests | per minute |\n|---|---|---:|---:|"
            );
        }
        None => {
            let _ = writeln!(s, "| resource | verb | requests |\n|---|---|---:|");
        }
    }
    for c in rows {
        match seconds {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.1} |",
                    c.resource,
                    c.verb,
                    c.count,
                    c.count as f64 * 60.0 / t
                );
            }
            None => {
                let _ = writeln!(s, "| {} | {} | {} |", c.resource, c.verb, c.count);
            }
        }
    }
    s.push('\n');
}

/// The controller's own counters: API requests by method and answer,
/// target writes, reconciles, time waited in its token bucket.
fn controller_table(s: &mut String, d: &ControllerDelta, seconds: Option<f64>) {
    let per_minute = |v: f64| seconds.map_or(String::new(), |t| format!(" | {:.1}", v * 60.0 / t));
    let _ = writeln!(
        s,
        "| counter | labels | count{} |\n|---|---|---:|{}",
        if seconds.is_some() {
            " | per minute"
        } else {
            ""
        },
        if seconds.is_some() { "---:|" } else { "" }
    );
    let rows = [
        ("`fanout_api_requests_total`", &d.api_requests),
        ("`fanout_target_writes_total`", &d.target_writes),
        ("`fanout_reconciles_total`", &d.reconciles),
    ];
    let mut any = false;
    for (name, map) in rows {
        for (labels, value) in map {
            any = true;
            let _ = writeln!(
                s,
                "| {name} | {labels} | {value:.0}{} |",
                per_minute(*value)
            );
        }
    }
    if d.rate_limit_wait_seconds.abs() > 1e-9 {
        any = true;
        let _ = writeln!(
            s,
            "| `fanout_client_rate_limit_wait_seconds_total` | | {:.2} s{} |",
            d.rate_limit_wait_seconds,
            seconds.map_or(String::new(), |_| " | —".to_owned())
        );
    }
    if !any {
        let _ = writeln!(s, "| (no counter moved) | | |");
    }
    s.push('\n');
}

/// Resources the controller uses (the chart's ClusterRole) that the audit
/// policy leaves out.
const UNAUDITED: [&str; 4] = [
    "namespaces",
    "events",
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
];

/// The requests of `apiserver` on resources the controller uses that the
/// audit policy leaves out.
fn unaudited(counts: &[RequestCount]) -> Vec<RequestCount> {
    counts
        .iter()
        .filter(|c| UNAUDITED.contains(&c.resource.as_str()))
        .cloned()
        .collect()
}

fn cpu(s: &mut String, r: &Results) {
    if r.cpu.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## 7. Control-plane CPU per copy\n\n\
         The CPU time (user + system, `/proc/<pid>/stat`) kube-apiserver and etcd used while the Fanout's \
         fan-out ran (its create to `synced == N` seen through a watch) and while the baseline ran (first \
         request to last answer), per 1,000 copies, at a fixed client-side limit on both sides, measured \
         as in section 1 (fresh controller, alternating order, copies deleted between runs). \"Background\" \
         is what the control plane used per second with nothing running against it, sampled before each \
         series: it is included in both sides (a window of T seconds carries T × background), so the \
         longer side pays more of it; \"net of background\" subtracts it (as noisy as the background is). \
         The goal is judged on the raw figures. Ratio = Fanout / baseline within a repeat, median over repeats.\n"
    );
    let _ = writeln!(
        s,
        "| limit (qps/burst) | N | baseline | Fanout | control plane per 1,000 copies, baseline | Fanout | ratio | background | net of background: baseline | Fanout | ratio | status versions | ratios per repeat |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for series in &r.cpu {
        for (n, runs) in by_size(&series.runs) {
            let per_1000 = |pick: &dyn Fn(&ThroughputRun) -> Option<f64>| {
                median(runs.iter().filter_map(|r| pick(r)))
                    .map(|cpu| duration(cpu * 1000.0 / n as f64))
                    .unwrap_or_else(|| "-".into())
            };
            let each: Vec<String> = runs
                .iter()
                .filter_map(|r| {
                    Some(format!(
                        "{:.2}",
                        r.fanout_control_plane_cpu_seconds?
                            / r.baseline_control_plane_cpu_seconds?
                    ))
                })
                .collect();
            let owned: Vec<ThroughputRun> = runs.iter().map(|r| (*r).clone()).collect();
            let background = series.idle_control_plane_cpu_per_second;
            let net = |cpu: Option<f64>, seconds: f64| Some(cpu? - background? * seconds);
            let net_baseline = median(
                runs.iter()
                    .filter_map(|r| net(r.baseline_control_plane_cpu_seconds, r.baseline_seconds)),
            );
            let net_fanout = median(
                runs.iter()
                    .filter_map(|r| net(r.fanout_control_plane_cpu_seconds, r.fanout_seconds)),
            );
            let net_ratio = median(runs.iter().filter_map(|r| {
                Some(
                    net(r.fanout_control_plane_cpu_seconds, r.fanout_seconds)?
                        / net(r.baseline_control_plane_cpu_seconds, r.baseline_seconds)?,
                )
            }));
            let per_1000_of =
                |cpu: Option<f64>| cpu.map_or("-".into(), |cpu| duration(cpu * 1000.0 / n as f64));
            let _ = writeln!(
                s,
                "| {}/{} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
                series.limits.qps,
                series.limits.burst,
                duration(median(runs.iter().map(|r| r.baseline_seconds)).unwrap_or(f64::NAN)),
                duration(median(runs.iter().map(|r| r.fanout_seconds)).unwrap_or(f64::NAN)),
                per_1000(&|r| r.baseline_control_plane_cpu_seconds),
                per_1000(&|r| r.fanout_control_plane_cpu_seconds),
                cpu_ratio(&owned).map_or("-".into(), |q| format!("{q:.2}x")),
                background.map_or("-".into(), |b| format!("{:.0} ms/s", b * 1000.0)),
                per_1000_of(net_baseline),
                per_1000_of(net_fanout),
                net_ratio.map_or("-".into(), |q| format!("{q:.2}x")),
                median(runs.iter().map(|r| r.status_changes as f64)).unwrap_or(f64::NAN),
                each.join(", ")
            );
        }
    }
    for series in &r.cpu {
        if let Some(first) = series.runs.iter().find(|t| t.repeat == 0) {
            let _ = writeln!(
                s,
                "\nAPI requests counted by the API server during the N = {} runs of the first repeat at {} QPS:\n",
                first.n, series.limits.qps
            );
            requests_table(
                s,
                &[
                    ("Fanout", &first.fanout_requests),
                    ("baseline", &first.baseline_requests),
                ],
            );
        }
    }
    s.push('\n');
}

fn idle(s: &mut String, r: &Results) {
    let Some(idle) = &r.idle else { return };
    let w = &idle.window;
    let _ = writeln!(
        s,
        "## 8. Idle cost\n\n\
         {} Fanouts, each with its own source and {} explicitly listed target namespaces ({} copies), \
         converged by one controller ({} from the creates to all Synced) and left alone for 5 s plus the \
         status interval; then a window of {:.0} s in which nothing changes (a full run makes it 12 min, \
         longer than the controller's periodic resync of each Fanout, which shows as a burst in the \
         minute-by-minute line; `--idle-window` sets it). Counted: the controller's \
         requests received in the window, from the API server's audit log (matched by its user agent \
         `fanout/<version> (<identity>)`; the audit policy covers Leases, Secrets, ConfigMaps and Fanouts; \
         a request counted once, a watch when it is opened); its own `fanout_api_requests_total` and other \
         counters (every request it made, audited or not); and `apiserver_request_total` of every client \
         (the API server's own included) for what the audit policy leaves out. Its CPU in the window: \
         {} (controller), {} (kube-apiserver + etcd, everything included); RSS {}.\n",
        thousands(idle.fanouts),
        idle.targets_per_fanout,
        thousands(idle.fanouts * idle.targets_per_fanout),
        duration(idle.converge_seconds),
        w.seconds,
        duration(w.controller_cpu_seconds),
        w.control_plane_cpu_seconds.map_or("-".into(), duration),
        mib(idle.rss_kib as f64)
    );
    quiet_window(s, w);
}

fn quiet_window(s: &mut String, w: &QuietWindow) {
    let _ = writeln!(s, "The controller's requests in the audit log:\n");
    counts_table(s, &w.audit, Some(w.seconds));
    if !w.per_minute.is_empty() {
        let minutes: Vec<String> = w.per_minute.iter().map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "The same, minute by minute (a periodic resync shows as a burst): {}.\n",
            minutes.join(", ")
        );
    }
    let _ = writeln!(s, "Its own counters:\n");
    controller_table(s, &w.controller, Some(w.seconds));
    let outside = unaudited(&w.apiserver);
    let _ = writeln!(
        s,
        "`apiserver_request_total` on the resources the controller uses that the audit policy leaves out \
         (namespaces, Events, admission policies), every client (the API server's own watches included; \
         discovery requests are not counted by resource):\n"
    );
    counts_table(s, &outside, Some(w.seconds));
}

fn failover(s: &mut String, r: &Results) {
    let Some(f) = &r.failover else { return };
    let _ = writeln!(
        s,
        "## 9. Reconcile-all after a failover\n\n\
         The {} converged Fanouts of section 8 (their leader still running), and a standby on the same \
         Lease, started and settled first. The leader gets {}: nothing is released, so the standby takes \
         the Lease when it expires (the default `--lease-duration`), then reconciles every Fanout. Timed \
         from the signal, the standby's `/metrics` scraped every 20 ms: leadership (`fanout_leader` 1), then \
         every Fanout reconciled (`fanout_reconciles_total`, `skipped` aside, up by {}{}). Its requests \
         from the signal until 3 s plus the status interval after that, from the audit log (its user \
         agent); writes = create, update, patch, delete on anything but Leases (Events are not audited: \
         see `fanout_api_requests_total` POSTs and `fanout_target_writes_total`).\n",
        thousands(f.fanouts),
        f.signal,
        thousands(f.fanouts),
        if f.complete {
            ""
        } else {
            "; **not reached: timed to its queue draining instead**"
        }
    );
    let _ = writeln!(
        s,
        "| kill → leader | leader → every Fanout reconciled | kill → every Fanout reconciled | reconciles | writes (audit) | target writes (metrics) | requests (its count) | peak RSS |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {} |\n",
        duration(f.to_leader_seconds),
        duration(f.leader_to_reconciled_seconds),
        duration(f.to_reconciled_seconds),
        f.reconciles,
        audit_total(&f.writes),
        f.controller.writes(),
        f.controller.requests(),
        mib(f.peak_rss_kib as f64)
    );
    let _ = writeln!(s, "Its requests in the audit log:\n");
    counts_table(s, &f.audit, None);
    let _ = writeln!(s, "Its own counters:\n");
    controller_table(s, &f.controller, None);
}

fn blocked(s: &mut String, r: &Results) {
    let Some(b) = &r.blocked else { return };
    let _ = writeln!(
        s,
        "## 10. Blocked targets\n\n\
         One Fanout (conflictPolicy Skip) into {} namespaces, each already holding a Secret of the copy's \
         name that the Fanout did not make (no owner labels). Created to every target reported Conflict: {}. \
         Then a window of {:.0} s with nothing changing, counted as in section 8. Then the bench deletes \
         the blockers (in {}, 64 at a time), and the Fanout's status is watched until every target is \
         Synced: **{} after the last delete**.\n",
        thousands(b.targets),
        duration(b.to_conflict_seconds),
        b.window.seconds,
        duration(b.delete_seconds),
        duration(b.to_synced_seconds)
    );
    quiet_window(s, &b.window);
    let _ = writeln!(
        s,
        "From the first delete to all Synced, the controller's requests in the audit log:\n"
    );
    counts_table(s, &b.unblock_audit, None);
    let _ = writeln!(s, "Its own counters then:\n");
    controller_table(s, &b.unblock_controller, None);
}

fn default_install(s: &mut String, r: &Results) {
    if r.default_install.is_empty() {
        return;
    }
    let first = &r.default_install[0];
    let _ = writeln!(
        s,
        "## 11. A default install\n\n\
         One Secret into N namespaces with the controller as a default install runs it: as the chart's own \
         ServiceAccount (its ClusterRole and leader-election Role rendered by `helm template`, a TokenRequest \
         token), so API Priority and Fairness puts it in an ordinary priority level, not `exempt` like the \
         admin of the other sections; and with the default flags (no `--kube-qps`, `--kube-burst`, \
         `--fanout-concurrency` or `--status-interval`: {}, {} in flight, as `fanout --help` \
         states them). The baseline: the same identity, the same limits, retrying a 429 after 1 s. Which limit \
         bound the fan-out: the client-side limit when its requests waited in the token bucket \
         (`fanout_client_rate_limit_wait_seconds_total` grew by more than 5% of the run; it sums the waits of \
         concurrent requests), the API server's APF when it answered 429 \
         (`fanout_api_requests_total{{code=\"429\"}}`) or queued requests \
         (`apiserver_flowcontrol_request_wait_duration_seconds`, non-exempt levels), else neither.\n",
        if first.qps == 0 {
            "no client-side limit (`--kube-qps 0`)".to_owned()
        } else {
            format!("{} QPS, burst {}", first.qps, first.burst)
        },
        first.concurrency
    );
    let _ = writeln!(
        s,
        "| N | repeat | baseline | Fanout | ratio | floor (N - burst)/QPS | waited in token bucket | 429s (Fanout / baseline) | APF queue wait, Fanout | bound |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for run in &r.default_install {
        let apf: Vec<String> = run
            .apf
            .iter()
            .filter(|d| d.priority_level != "exempt")
            .map(|d| {
                format!(
                    "{}: {} requests, {:.2} s, {} rejected",
                    d.priority_level, d.requests, d.wait_seconds, d.rejected
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2}x | {} | {:.1} s | {:.0} / {} | {} | {} |",
            run.n,
            run.repeat,
            duration(run.baseline_seconds),
            duration(run.fanout_seconds),
            run.ratio(),
            if run.qps == 0 {
                "— (no client limit)".to_owned()
            } else {
                duration(run.n.saturating_sub(run.burst as usize) as f64 / f64::from(run.qps))
            },
            run.controller.rate_limit_wait_seconds,
            run.controller.throttled(),
            run.baseline_throttled,
            if apf.is_empty() {
                "-".into()
            } else {
                apf.join("; ")
            },
            run.bound
        );
    }
    if let Some(largest) = r.default_install.iter().max_by_key(|run| run.n) {
        let _ = writeln!(
            s,
            "\nThe controller's counters during the N = {} fan-out:\n",
            largest.n
        );
        controller_table(s, &largest.controller, None);
    }
}

fn scale(s: &mut String, r: &Results) {
    let Some(sc) = &r.scale else { return };
    let copies = sc.fanouts * sc.per_fanout;
    let _ = writeln!(
        s,
        "## 12. Start to ready and to converged at scale\n\n\
         {} Fanouts, each with its own source and {} explicitly listed target namespaces: {} copies. First \
         a fresh controller (ready, leader) gets every Fanout created at once and converges them from \
         nothing: **{}** from the first create to all Synced (the Fanouts' statuses listed every 2 s once \
         the controller's `fanout_targets{{state=\"Synced\"}}` reached the count), peak RSS **{}**. \
         Then a fresh process starts with everything converged: **{}** to `/readyz` 200 (the controller's \
         checks passing), {} to leader, **{}** to every Fanout reconciled{}; peak RSS **{}** (RSS {} then). \
         Its writes from spawn to 3 s plus the status interval after that: **{}** (audit), {:.0} target \
         writes (metrics).\n",
        thousands(sc.fanouts),
        sc.per_fanout,
        thousands(copies),
        duration(sc.converge_seconds),
        mib(sc.converge_peak_rss_kib as f64),
        duration(sc.restart.to_ready_seconds),
        duration(sc.restart.to_leader_seconds),
        duration(sc.restart.to_reconciled_seconds),
        if sc.restart_complete {
            ""
        } else {
            " (**not reached: timed to its queue draining**)"
        },
        mib(sc.restart_peak_rss_kib as f64),
        mib(sc.restart_rss_kib as f64),
        audit_total(&sc.restart_writes),
        sc.restart_controller.writes()
    );
    let _ = writeln!(s, "The restart's requests in the audit log:\n");
    counts_table(s, &sc.restart_audit, None);
    let _ = writeln!(s, "Its own counters:\n");
    controller_table(s, &sc.restart_controller, None);
    let _ = writeln!(
        s,
        "The convergence from nothing, requests in the audit log:\n"
    );
    counts_table(s, &sc.converge_audit, None);
    let _ = writeln!(s, "Its own counters:\n");
    controller_table(s, &sc.converge_controller, None);
}
