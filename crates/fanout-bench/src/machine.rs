//! The machine and the versions a run measured, for the report: figures
//! without them cannot be compared with anything.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Where the bench ran.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Machine {
    /// Online CPUs (`nproc`).
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal, KiB.
    pub memory_kib: u64,
    /// `uname -sr`.
    pub kernel: String,
    /// /proc/loadavg when the run started (the machine is shared).
    pub load_at_start: String,
}

/// What was measured.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Versions {
    /// `fanout --version`.
    pub fanout: String,
    /// `git describe --always --dirty`.
    pub commit: String,
    /// `rustc --version`.
    pub rustc: String,
    /// tools/versions.env, KEY=VALUE lines.
    pub tools: Vec<String>,
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Machine {
    /// This machine, now.
    pub fn current() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned()),
            memory_kib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0),
            kernel: command_line("uname", &["-sr"]),
            load_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

impl Versions {
    /// The versions of `bin` and of the repository at `repo`.
    pub fn current(bin: &Path, repo: &Path) -> Versions {
        let tools = std::fs::read_to_string(repo.join("tools/versions.env")).unwrap_or_default();
        Versions {
            fanout: command_line(&bin.to_string_lossy(), &["--version"]),
            commit: command_line(
                "git",
                &[
                    "-C",
                    &repo.to_string_lossy(),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            ),
            rustc: command_line("rustc", &["--version"]),
            tools: tools
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
        }
    }
}
