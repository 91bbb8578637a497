//! Operating Fanout, proven: the alerting rules (`promtool check rules`, and
//! `promtool test rules` cases for every alert), the runbook they link, the
//! opt-in PrometheusRule and Grafana dashboard ConfigMap (rendered only when
//! enabled, embedding exactly the files), `deploy/prometheus-rules.yaml` in
//! sync, the dashboard's shape and queries, kube-score on the chart and
//! `deploy/` with nothing to report beyond the checks the README declines,
//! the NetworkPolicy, anti-affinity and ephemeral-storage the chart renders,
//! and the chart's refusal to install without an image.
//!
//! Most tests need only helm, promtool and kube-score; the two that talk to
//! an API server use the testbed of `tests/support`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use testkit::repo_root;

const CHART: &str = "charts/fanout";
const RULES_FILE: &str = "charts/fanout/files/alerts.yaml";
const RULES_TESTS: &str = "charts/fanout/tests/alerts.test.yaml";
const DASHBOARD_FILE: &str = "charts/fanout/files/dashboard.json";
const DEPLOY_FILE: &str = "deploy/fanout.yaml";
const DEPLOY_RULES_FILE: &str = "deploy/prometheus-rules.yaml";
const RUNBOOK: &str = "docs/runbook.md";
/// The README section whose table is the one list of declined kube-score checks.
const KUBE_SCORE_SECTION: &str = "### kube-score";
/// The one value the chart requires; any repository will do for rendering.
const IMAGE: [&str; 2] = ["--set", "image.repository=fanout.local/fanout"];
/// Every optional object of the chart turned on at once.
const EVERYTHING_ON: &str = "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true";

/// Every series the controller exports (SPEC §3 and what the controller's
/// metrics modules register), with the `_bucket` series of its histogram. The
/// rules and the dashboard may query nothing else: a misspelt name would pass
/// `promtool test rules` (its input series are written by the same hand) and
/// show an empty panel.
const EXPORTED_SERIES: &[&str] = &[
    "fanout_ready",
    "fanout_leader",
    "fanout_leader_transitions_total",
    "fanout_shutdown_phase",
    "fanout_drain_duration_seconds",
    "fanout_shutdown_timeout_seconds",
    "fanout_build_info",
    "fanout_reconciles_total",
    "fanout_reconcile_duration_seconds_bucket",
    "fanout_target_writes_total",
    "fanout_targets",
    "fanout_queue_depth",
    "fanout_reconciles_in_flight",
    "fanout_target_writes_in_flight",
    "fanout_source_access_policy",
    "fanout_api_requests_total",
    "fanout_client_rate_limit_wait_seconds_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
];

// ---------------------------------------------------------------------------
// Tools (as chart.rs finds them) and small helpers
// ---------------------------------------------------------------------------

/// The pinned tools' directory: `FANOUT_TEST_TOOLS_BIN`, else what
/// `scripts/tools-build` prints (it builds what is missing, kube-score too).
fn tools_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("FANOUT_TEST_TOOLS_BIN") {
            return PathBuf::from(bin);
        }
        let output = Command::new(repo_root().join("scripts/tools-build"))
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/tools-build");
        assert!(
            output.status.success(),
            "scripts/tools-build failed ({}):\n{}",
            output.status,
            text(&output.stderr)
        );
        PathBuf::from(text(&output.stdout).trim())
    })
}

/// The Kubernetes version pinned in tools/versions.env, passed to helm
/// explicitly (the chart's kubeVersion refuses helm's built-in default).
fn kube_version() -> String {
    let pins = read(Path::new("tools/versions.env"));
    pins.lines()
        .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
        .expect("KUBERNETES_VERSION in tools/versions.env")
        .trim()
        .to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file of the repository, as text.
fn read(path: &Path) -> String {
    std::fs::read_to_string(repo_root().join(path))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool from the pinned tools (`helm`, `kube-score`), run from the repository root.
fn tool(name: &str) -> Command {
    let mut command = Command::new(tools_bin().join(name));
    command.current_dir(repo_root()).stdin(Stdio::null());
    command
}

/// promtool from Debian's prometheus package (scripts/install-prereqs).
fn promtool(args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run promtool (Debian package prometheus; scripts/install-prereqs installs it)")
}

/// `helm template` of the chart as release `fanout` in fanout-system, with
/// `args` after the chart; the output whether it succeeded or not.
fn template_output(args: &[&str]) -> Output {
    tool("helm")
        .args(["template", "fanout", CHART, "--namespace", "fanout-system"])
        .args(["--kube-version", &kube_version()])
        .args(args)
        .output()
        .expect("run helm template")
}

/// The rendered YAML text, with an image repository and `--set` of each of
/// `sets`; panics with helm's message if rendering fails.
fn template(sets: &[&str]) -> String {
    let mut args: Vec<&str> = IMAGE.to_vec();
    for set in sets {
        args.extend(["--set", set]);
    }
    let output = template_output(&args);
    assert!(
        output.status.success(),
        "helm template {args:?} failed:\n{}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Every document of a multi-document YAML text (empty ones skipped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one rendered object of `kind`, as its typed Kubernetes struct.
fn only<T: DeserializeOwned>(documents: &[Value], kind: &str) -> T {
    let found = of_kind(documents, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    serde_json::from_value(found[0].clone()).unwrap()
}

/// The rules file, parsed.
fn rules_file() -> Value {
    serde_yaml::from_str(&read(Path::new(RULES_FILE))).unwrap()
}

/// Every alerting rule of the rules file.
fn alert_rules() -> Vec<Value> {
    let rules: Vec<Value> = rules_file()["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").clone())
        .collect();
    assert!(!rules.is_empty(), "{RULES_FILE} holds no rule");
    for rule in &rules {
        assert!(
            rule["alert"].is_string(),
            "only alerting rules are expected: {rule}"
        );
    }
    rules
}

fn dashboard() -> Value {
    serde_json::from_str(&read(Path::new(DASHBOARD_FILE))).unwrap()
}

/// Every query of the dashboard: (panel title, expr).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |target| {
                    let expr = target["expr"].as_str().unwrap_or_default().to_owned();
                    (title.clone(), expr)
                })
        })
        .collect()
}

/// The series names a PromQL expression reads: identifiers outside quotes
/// that start with `fanout_` or `process_`.
fn series_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_quotes = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("fanout_") || word.starts_with("process_") {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

// ---------------------------------------------------------------------------
// The alerting rules
// ---------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_check_rules() {
    for file in [RULES_FILE, DEPLOY_RULES_FILE] {
        let output = promtool(&["check", "rules", file]);
        assert!(
            output.status.success(),
            "promtool check rules {file}:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}

/// `promtool test rules` passes, and covers every alert both ways: a case
/// where it fires and one where it must stay silent.
#[test]
fn every_alert_has_promtool_tests_that_fire_and_stay_silent() {
    let output = promtool(&["test", "rules", RULES_TESTS]);
    assert!(
        output.status.success(),
        "promtool test rules {RULES_TESTS}:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );

    let tests: Value = serde_yaml::from_str(&read(Path::new(RULES_TESTS))).unwrap();
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests") {
        for check in case["alert_rule_test"].as_array().into_iter().flatten() {
            let alert = check["alertname"].as_str().unwrap().to_owned();
            let expected = check["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected == 0 {
                silent.insert(alert);
            } else {
                fires.insert(alert);
            }
        }
    }
    let alerts: BTreeSet<String> = alert_rules()
        .iter()
        .map(|rule| rule["alert"].as_str().unwrap().to_owned())
        .collect();
    let untested_firing: Vec<_> = alerts.difference(&fires).collect();
    let untested_silent: Vec<_> = alerts.difference(&silent).collect();
    assert!(
        untested_firing.is_empty() && untested_silent.is_empty(),
        "{RULES_TESTS} must show each alert firing and staying silent; \
         no firing case for {untested_firing:?}, no silent case for {untested_silent:?}"
    );
    let unknown: Vec<_> = fires
        .union(&silent)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
}

/// Each alert tells the on-call what happened, how bad it is, what to check,
/// and links its own section of the runbook; the runbook has a section for
/// every alert and none for an alert that does not exist.
#[test]
fn every_alert_says_what_to_check_and_links_its_runbook_section() {
    let runbook = read(Path::new(RUNBOOK));
    let sections: BTreeMap<String, String> = runbook
        .split("\n## ")
        .skip(1)
        .map(|section| {
            let (title, body) = section.split_once('\n').unwrap_or((section, ""));
            (title.trim().to_owned(), body.to_owned())
        })
        .collect();
    let rules = alert_rules();
    for rule in &rules {
        let alert = rule["alert"].as_str().unwrap();
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{alert}: severity {severity:?}"
        );
        let annotations = &rule["annotations"];
        let summary = annotations["summary"].as_str().unwrap_or_default();
        let description = annotations["description"].as_str().unwrap_or_default();
        assert!(!summary.is_empty(), "{alert} has no summary");
        assert!(
            description.contains("Check") && description.len() > summary.len() * 2,
            "{alert}: the description must say what to check: {description:?}"
        );
        assert_eq!(
            annotations["runbook_url"].as_str(),
            Some(format!("docs/runbook.md#{}", alert.to_lowercase()).as_str()),
            "{alert}: runbook_url must point at its section of {RUNBOOK}"
        );
        let section = sections
            .get(alert)
            .unwrap_or_else(|| panic!("{RUNBOOK} has no section `## {alert}`"));
        for part in ["**Meaning.**", "**Impact.**", "**Check.**", "**Fix.**"] {
            assert!(
                section.contains(part),
                "{RUNBOOK}, {alert}: no {part} paragraph"
            );
        }
    }
    let alerts: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    let orphans: Vec<&String> = sections
        .keys()
        .filter(|title| !alerts.contains(title.as_str()))
        .collect();
    assert!(
        orphans.is_empty(),
        "{RUNBOOK} sections without an alert: {orphans:?}"
    );
}

#[test]
fn rules_and_dashboard_query_only_series_the_controller_exports() {
    let exported: BTreeSet<&str> = EXPORTED_SERIES.iter().copied().collect();
    let mut queries: Vec<(String, String)> = alert_rules()
        .iter()
        .map(|rule| {
            (
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    queries.extend(dashboard_queries(&dashboard()));
    for (what, expr) in &queries {
        let names = series_names(expr);
        assert!(!names.is_empty(), "{what}: reads no Fanout series: {expr}");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "{what}: {name} is not a series the controller exports: {expr}"
            );
        }
    }
}

#[test]
fn deploy_prometheus_rules_are_the_charts_rules_file() {
    let output = Command::new(repo_root().join("scripts/render-deploy"))
        .arg("--stdout-rules")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/render-deploy --stdout-rules");
    assert!(
        output.status.success(),
        "scripts/render-deploy --stdout-rules failed:\n{}",
        text(&output.stderr)
    );
    let rendered = text(&output.stdout);
    let committed = read(Path::new(DEPLOY_RULES_FILE));
    assert!(
        rendered == committed,
        "{DEPLOY_RULES_FILE} is out of date with {RULES_FILE}: run scripts/render-deploy"
    );
    let shipped: Value = serde_yaml::from_str(&committed).unwrap();
    assert_eq!(
        shipped,
        rules_file(),
        "the same rules, not only the same text"
    );
}

// ---------------------------------------------------------------------------
// The opt-in PrometheusRule and dashboard ConfigMap
// ---------------------------------------------------------------------------

#[test]
fn prometheus_rule_renders_only_when_enabled_and_embeds_the_rules_file() {
    let default = documents(&template(&[]));
    assert!(
        of_kind(&default, "PrometheusRule").is_empty(),
        "a PrometheusRule needs the operator's CRD: opt-in only"
    );

    let enabled = documents(&template(&[
        "metrics.prometheusRule.enabled=true,metrics.prometheusRule.labels.release=kube-prometheus-stack",
    ]));
    let rule = of_kind(&enabled, "PrometheusRule");
    assert_eq!(rule.len(), 1);
    assert_eq!(rule[0]["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule[0]["metadata"]["namespace"], "fanout-system");
    assert_eq!(
        rule[0]["metadata"]["labels"]["release"], "kube-prometheus-stack",
        "labels for the operator's ruleSelector"
    );
    assert_eq!(rule[0]["spec"], rules_file(), "the rules file, exactly");

    // With the runbook published, only the links change.
    let base = "https://git.example.com/platform/fanout/blob/main/docs/runbook.md";
    let linked = documents(&template(&[
        "metrics.prometheusRule.enabled=true",
        &format!("metrics.prometheusRule.runbookUrl={base}"),
    ]));
    let mut spec = of_kind(&linked, "PrometheusRule")[0]["spec"].clone();
    for rule in spec["groups"][0]["rules"].as_array_mut().unwrap() {
        let alert = rule["alert"].as_str().unwrap().to_lowercase();
        let url = &mut rule["annotations"]["runbook_url"];
        assert_eq!(url.as_str(), Some(format!("{base}#{alert}").as_str()));
        *url = Value::String(format!("docs/runbook.md#{alert}"));
    }
    assert_eq!(spec, rules_file(), "nothing but the runbook links changes");
}

#[test]
fn dashboard_configmap_renders_only_when_enabled_and_embeds_the_dashboard() {
    let default = documents(&template(&[]));
    assert!(
        !of_kind(&default, "ConfigMap")
            .iter()
            .any(|c| c["metadata"]["name"] == "fanout-dashboard"),
        "the dashboard is opt-in"
    );

    let file = read(Path::new(DASHBOARD_FILE));
    let enabled = documents(&template(&["metrics.dashboard.enabled=true"]));
    let config_map: ConfigMap = only(&enabled, "ConfigMap");
    let metadata = &config_map.metadata;
    assert_eq!(metadata.name.as_deref(), Some("fanout-dashboard"));
    assert_eq!(metadata.namespace.as_deref(), Some("fanout-system"));
    assert_eq!(
        metadata.labels.as_ref().unwrap().get("grafana_dashboard"),
        Some(&"1".to_owned()),
        "the label Grafana's sidecar looks for"
    );
    let data = config_map.data.unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(
        data["fanout.json"].trim_end(),
        file.trim_end(),
        "the dashboard file, exactly"
    );

    // The sidecar's label, folder annotation and namespace are the user's.
    let custom = documents(&template(&[
        "metrics.dashboard.enabled=true,metrics.dashboard.labels.grafana_dashboard=null,metrics.dashboard.labels.dashboards=fanout",
        "metrics.dashboard.annotations.grafana_folder=Platform,metrics.dashboard.namespace=monitoring",
    ]));
    let config_map: ConfigMap = only(&custom, "ConfigMap");
    let metadata = &config_map.metadata;
    let labels = metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("dashboards"), Some(&"fanout".to_owned()));
    assert!(!labels.contains_key("grafana_dashboard"), "{labels:?}");
    assert_eq!(
        metadata.annotations.as_ref().unwrap().get("grafana_folder"),
        Some(&"Platform".to_owned())
    );
    assert_eq!(metadata.namespace.as_deref(), Some("monitoring"));
}

/// Importable into any Grafana with any Prometheus data source: a recent
/// schema, a data source variable and no fixed data source uid; every panel
/// has a query; the panels the operators asked for are there.
#[test]
fn dashboard_uses_a_datasource_variable_and_has_the_promised_panels() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap_or_default() >= 36,
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a Prometheus data source variable named datasource"
    );

    // Every data source reference, wherever it is, is the variable.
    fn datasource_refs(value: &Value, found: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    if key == "datasource" {
                        found.push(value.clone());
                    }
                    datasource_refs(value, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| datasource_refs(v, found)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasource_refs(&dashboard, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        assert_eq!(
            reference,
            json!({"type": "prometheus", "uid": "${datasource}"}),
            "no hard-coded data source"
        );
    }

    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "{title}: no query");
        assert!(
            !panel["description"].as_str().unwrap_or_default().is_empty(),
            "{title}: no description"
        );
    }
    let queries = dashboard_queries(&dashboard);
    for (title, expr) in &queries {
        assert!(!expr.trim().is_empty(), "{title}: empty expr");
    }
    // (a title it must have, a series one of its queries must read)
    for (title, series) in [
        ("Fan-out progress", "fanout_targets"),
        ("Targets by state", "fanout_targets"),
        ("Reconciles by result", "fanout_reconciles_total"),
        (
            "Reconcile duration",
            "fanout_reconcile_duration_seconds_bucket",
        ),
        (
            "Target writes by operation and result",
            "fanout_target_writes_total",
        ),
        ("Leader per pod", "fanout_leader"),
        ("Ready per pod", "fanout_ready"),
        ("Pods by shutdown phase", "fanout_shutdown_phase"),
        (
            "Drain duration and deadline",
            "fanout_drain_duration_seconds",
        ),
        (
            "API requests by method and answer",
            "fanout_api_requests_total",
        ),
    ] {
        assert!(
            queries
                .iter()
                .any(|(t, expr)| t == title && series_names(expr).contains(series)),
            "no panel {title:?} querying {series}"
        );
    }
}

/// Every dashboard query is valid PromQL once Grafana's variables are
/// substituted: promtool checks each one as a recording rule.
#[test]
fn dashboard_queries_are_valid_promql() {
    let rules: Vec<Value> = dashboard_queries(&dashboard())
        .iter()
        .enumerate()
        .map(|(n, (_, expr))| {
            json!({
                "record": format!("fanout_dashboard:query_{n}"),
                "expr": expr.replace("$namespace", ".*").replace("$__rate_interval", "2m"),
            })
        })
        .collect();
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let rules = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(file.path(), serde_yaml::to_string(&rules).unwrap()).unwrap();
    let output = promtool(&["check", "rules", file.path().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "a dashboard query is not valid PromQL:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

// ---------------------------------------------------------------------------
// kube-score
// ---------------------------------------------------------------------------

/// The declined checks: the first column of the README's kube-score table,
/// each a kube-score argument.
fn declined_kube_score_checks() -> Vec<String> {
    let readme = read(Path::new("README.md"));
    let section = readme
        .split_once(&format!("\n{KUBE_SCORE_SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no {KUBE_SCORE_SECTION:?} section"))
        .1;
    let section = section.split("\n#").next().unwrap();
    let declined: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|row| {
            row.split_once('`')
                .expect("| `argument` | ...")
                .0
                .to_owned()
        })
        .collect();
    for argument in &declined {
        assert!(
            argument.starts_with("--ignore-"),
            "README's kube-score table: {argument:?} is not an --ignore-... argument"
        );
    }
    declined
}

/// `kube-score score --output-format ci` of a YAML text with `arguments`.
fn kube_score(yaml: &str, arguments: &[String]) -> Output {
    use std::io::Write;
    let mut child = tool("kube-score")
        .args(["score", "--output-format", "ci"])
        .args(arguments)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kube-score (scripts/tools-build builds it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The lines of kube-score's ci output that report a problem.
fn findings(output: &Output) -> Vec<String> {
    text(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("[CRITICAL]") || line.starts_with("[WARNING]"))
        .map(str::to_owned)
        .collect()
}

/// What kube-score is run on: the chart with defaults, the chart with every
/// optional object on, and the plain manifests.
fn kube_score_subjects() -> Vec<(&'static str, String)> {
    vec![
        ("the chart with its defaults", template(&[])),
        ("the chart with everything on", template(&[EVERYTHING_ON])),
        (DEPLOY_FILE, read(Path::new(DEPLOY_FILE))),
    ]
}

#[test]
fn kube_score_reports_nothing_beyond_the_declined_checks() {
    let declined = declined_kube_score_checks();
    assert!(!declined.is_empty(), "README's kube-score table is empty");
    for (subject, yaml) in kube_score_subjects() {
        let output = kube_score(&yaml, &declined);
        let stdout = text(&output.stdout);
        assert!(
            stdout.contains("[OK] fanout/fanout-system apps/v1/Deployment"),
            "kube-score did not score the Deployment of {subject}:\n{stdout}{}",
            text(&output.stderr)
        );
        let findings = findings(&output);
        assert!(
            output.status.success() && findings.is_empty(),
            "kube-score on {subject} reports more than the checks README.md declines \
             ({declined:?}):\n{}\n{}",
            findings.join("\n"),
            text(&output.stderr)
        );
    }
}

/// A declined check that no longer fires is a stale entry: the table must
/// list what is declined, no more.
#[test]
fn each_declined_kube_score_check_still_fires() {
    let declined = declined_kube_score_checks();
    for (subject, yaml) in kube_score_subjects() {
        for argument in &declined {
            let others: Vec<String> = declined
                .iter()
                .filter(|a| *a != argument)
                .cloned()
                .collect();
            let output = kube_score(&yaml, &others);
            assert!(
                !output.status.success() && !findings(&output).is_empty(),
                "without {argument}, kube-score finds nothing in {subject}: \
                 remove it from README.md's kube-score table"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// What the chart renders for kube-score's sake
// ---------------------------------------------------------------------------

/// The pod reaches the API server only, and only the metrics scrapers reach
/// the pod, on the admin port only.
#[test]
fn network_policy_allows_the_api_server_out_and_the_metrics_scrape_in() {
    let docs = documents(&template(&[]));
    let policy: NetworkPolicy = only(&docs, "NetworkPolicy");
    let deployment: Deployment = only(&docs, "Deployment");
    let spec = policy.spec.unwrap();
    assert_eq!(
        spec.pod_selector.as_ref().unwrap().match_labels,
        deployment.spec.unwrap().selector.match_labels,
        "the policy selects the controller's pods"
    );
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_owned(), "Egress".to_owned()])
    );

    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 1, "one ingress rule: {ingress:?}");
    let ports = ingress[0].ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::String("admin".to_owned())));
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    let from = serde_json::to_value(ingress[0].from.clone().unwrap()).unwrap();
    assert_eq!(
        from,
        json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]),
        "only Prometheus' pods, from any namespace"
    );

    let egress = spec.egress.unwrap();
    assert_eq!(egress.len(), 1, "one egress rule (no DNS): {egress:?}");
    let cidrs: Vec<String> = egress[0]
        .to
        .iter()
        .flatten()
        .map(|peer| {
            peer.ip_block
                .as_ref()
                .expect("ipBlock peers only")
                .cidr
                .clone()
        })
        .collect();
    assert_eq!(cidrs, ["0.0.0.0/0", "::/0"]);
    let ports: Vec<(IntOrString, String)> = egress[0]
        .ports
        .iter()
        .flatten()
        .map(|p| (p.port.clone().unwrap(), p.protocol.clone().unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            (IntOrString::Int(443), "TCP".to_owned()),
            (IntOrString::Int(6443), "TCP".to_owned())
        ],
        "the API server's ports only"
    );

    // No scrapers listed: the admin port is open to any source, nothing else is.
    let docs = documents(&template(&["networkPolicy.metricsScrapers=null"]));
    let open: NetworkPolicy = only(&docs, "NetworkPolicy");
    let ingress = open.spec.unwrap().ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    assert!(ingress[0].from.is_none(), "{ingress:?}");
    assert!(ingress[0].ports.is_some());

    let docs = documents(&template(&["networkPolicy.enabled=false"]));
    assert!(of_kind(&docs, "NetworkPolicy").is_empty());
}

#[test]
fn replicas_prefer_different_nodes_and_declare_ephemeral_storage() {
    let pod_spec = |sets: &[&str]| {
        let deployment: Deployment = only(&documents(&template(sets)), "Deployment");
        let spec = deployment.spec.unwrap();
        let labels = spec.selector.match_labels.unwrap();
        (spec.template.spec.unwrap(), labels)
    };
    let (pod, selector) = pod_spec(&[]);
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    assert!(
        anti.required_during_scheduling_ignored_during_execution
            .is_none(),
        "preferred only: a required one blocks a rollout on a two-node cluster"
    );
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(preferred.len(), 1);
    assert_eq!(preferred[0].weight, 100);
    let term = &preferred[0].pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        term.label_selector.as_ref().unwrap().match_labels.as_ref(),
        Some(&selector)
    );

    let resources = pod.containers[0].resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["ephemeral-storage"].0, "64Mi");
    let limits = resources.limits.unwrap();
    assert_eq!(limits["ephemeral-storage"].0, "256Mi");
    assert!(!limits.contains_key("cpu"), "no CPU limit (declined)");
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent"),
        "Always is declined"
    );

    // The user's own podAntiAffinity replaces the chart's; off means none.
    let (pod, _) = pod_spec(&[
        "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey=topology.kubernetes.io/zone",
    ]);
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    assert!(
        anti.preferred_during_scheduling_ignored_during_execution
            .is_none()
    );
    assert_eq!(
        anti.required_during_scheduling_ignored_during_execution
            .unwrap()[0]
            .topology_key,
        "topology.kubernetes.io/zone"
    );
    let (pod, _) = pod_spec(&["hostAntiAffinity.enabled=false"]);
    assert!(pod.affinity.is_none());
}

// ---------------------------------------------------------------------------
// No default image
// ---------------------------------------------------------------------------

/// The message a user gets when image.repository is left unset.
const NO_IMAGE: &str = "image.repository is required: there is no public Fanout image";

#[test]
fn helm_template_without_an_image_fails_and_says_how_to_get_one() {
    let output = template_output(&[]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "rendered without an image");
    for words in [
        NO_IMAGE,
        "Dockerfile",
        "push",
        "--set image.repository=REGISTRY/fanout",
    ] {
        assert!(
            stderr.contains(words),
            "the message does not say {words:?}:\n{stderr}"
        );
    }
    // The message is not a side effect of the value being empty in one way:
    // an explicit empty string fails the same way.
    let output = template_output(&["--set", "image.repository="]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains(NO_IMAGE),
        "{}",
        text(&output.stderr)
    );

    let rendered = template(&[]);
    assert!(
        rendered.contains("image: \"fanout.local/fanout:"),
        "with a repository, the image is it and the chart's appVersion"
    );
}

/// `helm install` without an image stops before creating anything.
#[tokio::test]
async fn helm_install_without_an_image_creates_nothing() {
    let cluster = testkit::cluster();
    let ns = cluster.namespace("ops-no-image").await;
    let output = cluster
        .command("helm")
        .args(["install", &testkit::random_name("fanout"), CHART])
        .args(["--namespace", ns.name()])
        .current_dir(repo_root())
        .output()
        .expect("run helm install");
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "helm install without an image succeeded"
    );
    assert!(stderr.contains(NO_IMAGE), "{stderr}");
    let releases = cluster
        .command("helm")
        .args(["list", "--all", "--short", "--namespace", ns.name()])
        .output()
        .unwrap();
    assert_eq!(
        text(&releases.stdout).trim(),
        "",
        "a refused install left a release"
    );
    let left = cluster.kubectl(&[
        "get",
        "serviceaccounts,networkpolicies,services,deployments",
        "--namespace",
        ns.name(),
        "--selector",
        "app.kubernetes.io/name=fanout",
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "", "a refused install created {left}");
}

/// The API server accepts the chart's new objects in their other shapes: the
/// NetworkPolicy open to any scraper and with extra rules, the dashboard
/// ConfigMap (its size included), no anti-affinity.
#[tokio::test]
async fn optional_shapes_are_accepted_by_the_api_server() {
    use std::io::Write;
    let cluster = testkit::cluster();
    let ns = cluster.namespace("ops-dry-run").await;
    let extra_egress = "networkPolicy.extraEgress[0].ports[0].port=53,networkPolicy.extraEgress[0].ports[0].protocol=UDP";
    let extra_ingress = "networkPolicy.extraIngress[0].from[0].ipBlock.cidr=10.0.0.0/8,networkPolicy.extraIngress[0].ports[0].port=admin";
    let dashboard = format!(
        "metrics.dashboard.enabled=true,metrics.dashboard.namespace={}",
        ns.name()
    );
    for sets in [
        vec![dashboard.as_str(), "networkPolicy.metricsScrapers=null"],
        vec![
            extra_egress,
            extra_ingress,
            "hostAntiAffinity.enabled=false",
        ],
        vec![
            "networkPolicy.apiServer.cidrs={192.0.2.10/32}",
            "networkPolicy.apiServer.ports={6443}",
        ],
    ] {
        let mut args: Vec<&str> = IMAGE.to_vec();
        for set in &sets {
            args.extend(["--set", set]);
        }
        let output = cluster
            .command("helm")
            .args(["template", "fanout", CHART, "--namespace", ns.name()])
            .args(&args)
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "helm template {sets:?}:\n{}",
            text(&output.stderr)
        );
        let mut apply = cluster
            .command("kubectl")
            .args(["apply", "--dry-run=server", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        apply
            .stdin
            .take()
            .unwrap()
            .write_all(&output.stdout)
            .unwrap();
        let applied = apply.wait_with_output().unwrap();
        assert!(
            applied.status.success(),
            "the API server refused the chart with {sets:?}:\n{}",
            text(&applied.stderr)
        );
        let stdout = text(&applied.stdout);
        assert!(
            stdout.contains("networkpolicy.networking.k8s.io/fanout"),
            "{stdout}"
        );
        if sets.contains(&dashboard.as_str()) {
            assert!(stdout.contains("configmap/fanout-dashboard"), "{stdout}");
        }
    }
}
