//! The one test kit of the workspace, shared by every test binary and by
//! the benchmark: real parts, never mocks.
//!
//! | module | what it gives a test |
//! |---|---|
//! | [`audit`] | the testbed's audit log read incrementally, from marks, through rotations |
//! | [`testbed`] | a real etcd + kube-apiserver ([`cluster`]), shared by a run or private, with random namespaces, ServiceAccount tokens, its audit log, and freeze/kill/start of its daemons |
//! | [`process`] | a controller binary as a child process: its admin server, metrics, logs, signals |
//! | [`proxy`] | an HTTPS fault proxy between a controller and the API server |
//! | [`world`] | a Fanout test's world: the CRD, a source Secret, consenting targets, the chart's own identity |
//! | [`prometheus`] | Debian's Prometheus on 127.0.0.1, scraping and queried through its API, optionally evaluating alerting rules |
//! | [`alertmanager`] | Debian's Alertmanager on 127.0.0.1, receiving those alerts, queried through its API v2 |
//!
//! Every server started here listens on 127.0.0.1 only and is stopped when
//! the value that owns it is dropped (or, for a private testbed, when the
//! test binary exits, whatever way it exits).

pub mod alertmanager;
pub mod audit;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod testbed;
pub mod world;

pub use audit::{AuditLog, AuditMark, AuditRecord};
pub use testbed::{
    AuditEvent, Cluster, TestNamespace, cluster, eventually, random_name, repo_root,
};
