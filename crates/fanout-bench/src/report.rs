//! `docs/benchmarks.md`: the figures of one run with the machine, the
//! versions, the limits, the exact command, and each goal met or not.
//! Written whole from [`Results`]; nothing in it is edited by hand except
//! the analysis, which is kept in `crates/fanout-bench/src/ANALYSIS.md` and included
//! as it is.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::options;
use crate::results::{RequestCount, Results, ThroughputRun};
use crate::stats::{duration, median, mib};

/// Goal: Fanout time over baseline time, at every N.
const RATIO_GOAL: f64 = 1.15;
/// Goal: peak RSS, MiB.
const RSS_GOAL_MIB: f64 = 50.0;
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
         controller and baseline both use the admin identity (group `system:masters`, exempt from API Priority and Fairness) |"
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
        let unlimited: Vec<String> = by_size(&r.throughput_unlimited)
            .iter()
            .filter_map(|(n, runs)| {
                Some(format!(
                    "{:.2}x at {n}",
                    median(runs.iter().map(|r| r.ratio()))?
                ))
            })
            .collect();
        if !unlimited.is_empty() {
            let _ = writeln!(
                s,
                "| (for reference, no client-side limit: the API server's own) | {} | — |",
                unlimited.join(", ")
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
            "| peak RSS under {RSS_GOAL_MIB} MiB ({} Fanouts, {} copies) | {} | {} |",
            mem.fanouts,
            mem.fanouts * mem.per_fanout,
            mib(peak),
            verdict(peak / 1024.0 < RSS_GOAL_MIB)
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
    s.push('\n');
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
         The same runs with no client-side limit on either side (`--kube-qps` and `--kube-burst` \
         {}): the API server (sharing the 2 cores with etcd, the controller and the bench) is the limit, \
         and the controller's own CPU time competes with it.\n",
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
