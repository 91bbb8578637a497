//! Command-line flags, each with an environment variable, validated at parse
//! time: a bad value exits 2 with a message that names the flag (clap's own
//! usage-error exit code), before anything touches the cluster.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand, ValueEnum};

/// Fanout copies a Secret or ConfigMap from one namespace into many and keeps
/// the copies true.
#[derive(Debug, Parser)]
#[command(name = "fanout", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do; without a subcommand, run the controller.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Controller settings.
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands besides running the controller.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the Fanout CustomResourceDefinition as YAML (what the chart ships).
    Crd,
}

/// Output format of the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The controller's settings.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Kubeconfig file. Without it: in-cluster config, then $KUBECONFIG, then ~/.kube/config.
    #[arg(long, env = "FANOUT_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(
        long,
        env = "FANOUT_ADMIN_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,

    /// Drain deadline after SIGTERM/SIGINT; past it, remaining work is abandoned and the exit
    /// code is 1. Keep it under the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "FANOUT_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = positive_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Fanouts reconciled at once.
    #[arg(
        long,
        env = "FANOUT_CONCURRENCY",
        default_value = "4",
        value_name = "N"
    )]
    pub concurrency: NonZeroUsize,

    /// Target writes in flight at once, across all Fanouts.
    #[arg(
        long,
        env = "FANOUT_FANOUT_CONCURRENCY",
        default_value = "32",
        value_name = "N"
    )]
    pub fanout_concurrency: NonZeroUsize,

    /// Deadline of every API request but watches: target writes, reads, status patches.
    #[arg(long, env = "FANOUT_WRITE_TIMEOUT", default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub write_timeout: Duration,

    /// Compete for a Lease and reconcile only while holding it (true/false).
    #[arg(long, env = "FANOUT_LEADER_ELECTION", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "FANOUT_LEASE_NAME", default_value = "fanout-leader", value_parser = dns_label, value_name = "NAME")]
    pub lease_name: String,

    /// Namespace of the leader Lease [default: $POD_NAMESPACE, else "default"].
    #[arg(long, env = "FANOUT_LEASE_NAMESPACE", value_parser = dns_label, value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long the Lease stays valid after each renewal (a killed leader is replaced after it);
    /// renewed every 2/3 of it, and a leader that cannot renew steps down at 9/10.
    #[arg(long, env = "FANOUT_LEASE_DURATION", default_value = "15s", value_parser = lease_duration, value_name = "DURATION")]
    pub lease_duration: Duration,

    /// Identity as lease holder [default: $POD_NAME, else hostname and a random suffix].
    #[arg(long, env = "FANOUT_IDENTITY", value_name = "ID")]
    pub identity: Option<String>,

    /// Copy only into namespaces that consent by label (true/false); false suits single-tenant clusters.
    #[arg(long, env = "FANOUT_REQUIRE_CONSENT", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set, value_name = "BOOL")]
    pub require_consent: bool,

    /// Name of the ValidatingAdmissionPolicy (and binding) that refuses a Fanout whose creator may
    /// not get its source; the controller warns and exports fanout_source_access_policy 0 while it
    /// is missing [default: none expected, one warning at start].
    #[arg(long, env = "FANOUT_SOURCE_ACCESS_POLICY", value_parser = dns_subdomain, value_name = "NAME")]
    pub source_access_policy: Option<String>,

    /// Reconcile only Fanouts whose labels match this selector (e.g. "shard=a"); default: all.
    #[arg(long, env = "FANOUT_SELECTOR", value_parser = label_selector, value_name = "SELECTOR")]
    pub fanout_selector: Option<String>,

    /// Interval at which a Fanout's status writes are coalesced during a fan-out.
    #[arg(long, env = "FANOUT_STATUS_INTERVAL", default_value = "1s", value_parser = positive_duration, value_name = "DURATION")]
    pub status_interval: Duration,

    /// Average API requests per second, a client-side limit; 0 turns it off
    /// and lets the API server's Priority and Fairness set the pace.
    #[arg(long, env = "FANOUT_KUBE_QPS", default_value = "0", value_name = "N")]
    pub kube_qps: u32,

    /// Requests allowed in a burst above --kube-qps (unused when it is 0).
    #[arg(
        long,
        env = "FANOUT_KUBE_BURST",
        default_value = "100",
        value_name = "N"
    )]
    pub kube_burst: NonZeroU32,

    /// Log format.
    #[arg(
        long,
        env = "FANOUT_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. "info" or "info,fanout=debug".
    #[arg(long, env = "FANOUT_LOG", default_value = "info", value_parser = log_filter, value_name = "FILTER")]
    pub log_filter: String,
}

impl Config {
    /// The Lease namespace: the flag, else the pod's own namespace.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|ns| !ns.is_empty())
            })
            .unwrap_or_else(|| "default".to_owned())
    }

    /// The holder identity: the flag, else the pod name, else host and a
    /// random suffix (two local processes must not share an identity).
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fanout".to_owned());
                format!("{host}-{:08x}", rand::random::<u32>())
            })
    }
}

/// A duration in humantime syntax ("25s", "1m30s"), greater than zero.
fn positive_duration(value: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(value).map_err(|e| format!("{e} (expected e.g. 25s, 1m30s)"))?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// A lease duration: whole seconds, at least 2 (renewal happens a third before expiry).
fn lease_duration(value: &str) -> Result<Duration, String> {
    let duration = positive_duration(value)?;
    if duration < Duration::from_secs(2) || duration.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds, at least 2s".to_owned());
    }
    Ok(duration)
}

/// A Kubernetes DNS label (RFC 1123): what namespace and Lease names must be.
fn dns_label(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(value.to_owned())
    } else {
        Err("must be a DNS label: at most 63 lowercase letters, digits or '-', not starting or ending with '-'".to_owned())
    }
}

/// A Kubernetes object name (RFC 1123 subdomain), as cluster-scoped
/// objects such as admission policies have.
fn dns_subdomain(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| dns_label(label).is_ok());
    if valid {
        Ok(value.to_owned())
    } else {
        Err(
            "must be a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253"
                .to_owned(),
        )
    }
}

/// A label selector in the API server's syntax (checked for shape here;
/// the API server has the last word when the watch starts).
fn label_selector(value: &str) -> Result<String, String> {
    let valid = !value.trim().is_empty()
        && value.split(',').all(|requirement| {
            let requirement = requirement.trim();
            !requirement.is_empty()
                && requirement
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=!() ".contains(c))
        });
    if valid {
        Ok(value.to_owned())
    } else {
        Err("must be a label selector such as 'team=a' or 'tier in (apps),!legacy'".to_owned())
    }
}

/// A log filter that tracing accepts.
fn log_filter(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fanout").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = parse(&[]).unwrap().config;
        assert_eq!(config.admin_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.shutdown_timeout, Duration::from_secs(25));
        assert!(config.leader_election);
        assert!(config.require_consent);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.lease_name, "fanout-leader");
    }

    #[test]
    fn booleans_take_explicit_values() {
        let config = parse(&["--leader-election=false", "--require-consent", "false"])
            .unwrap()
            .config;
        assert!(!config.leader_election);
        assert!(!config.require_consent);
    }

    #[test]
    fn bad_values_are_usage_errors_that_name_the_flag() {
        for (args, flag) in [
            (&["--shutdown-timeout", "0s"][..], "--shutdown-timeout"),
            (&["--shutdown-timeout", "soon"][..], "--shutdown-timeout"),
            (&["--concurrency", "0"][..], "--concurrency"),
            (&["--fanout-concurrency=-3"][..], "--fanout-concurrency"),
            (&["--admin-addr", "localhost"][..], "--admin-addr"),
            (&["--log-format", "yaml"][..], "--log-format"),
            (
                &["--lease-namespace", "Not_A_Label"][..],
                "--lease-namespace",
            ),
            (&["--lease-duration", "1500ms"][..], "--lease-duration"),
            (&["--leader-election", "maybe"][..], "--leader-election"),
            (&["--kube-qps=-1"][..], "--kube-qps"),
            (&["--kube-burst", "0"][..], "--kube-burst"),
            (&["--fanout-selector", "a=b,,c"][..], "--fanout-selector"),
            (
                &["--source-access-policy", "Not A Name"][..],
                "--source-access-policy",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert_ne!(err.kind(), ErrorKind::DisplayHelp);
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn crd_is_a_subcommand() {
        assert!(matches!(
            parse(&["crd"]).unwrap().command,
            Some(Command::Crd)
        ));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
