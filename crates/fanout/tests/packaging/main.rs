//! What users install: the Helm chart (lint, values, rendering, a real
//! `helm install`), `deploy/` kept equal to the chart, the CRD kept equal
//! to the Rust types, the chart's RBAC as the API server enforces it, and
//! the Dockerfile's build on exactly its build context; and day-2
//! operations: alerting rules (promtool), the dashboard, kube-score, the
//! NetworkPolicy and the image the chart needs.

mod chart;
mod operations;
mod rbac;
