//! The testbed's API-server audit log (`<testbed dir>/audit.log`, JSON
//! lines at Metadata level; see `scripts/testbed`), read incrementally:
//! [`AuditLog::mark`] notes where the log ends now, and
//! [`AuditLog::read_since`] hands over every line written after a mark,
//! without reading what came before it. [`crate::Cluster::audit`] reads the
//! whole log, which suits a test; a benchmark's log grows to hundreds of MB
//! and is rotated by the API server at 200 MB (`--audit-log-maxsize`:
//! `audit.log` is renamed `audit-<time>.log` and a new one started), so a
//! mark names the file by its inode and the reader follows it through a
//! rotation.
//!
//! Each request has a line per stage (`ResponseComplete`, and
//! `ResponseStarted` before it for a long-running request such as a watch),
//! all with one `auditID`: count requests by their id, not by lines.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::testbed::AuditEvent;

/// File name of the live log; rotated ones are `audit-<time>.log`.
const LIVE: &str = "audit.log";

/// One line of the audit log: one stage of one request.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    /// The request's id, shared by its stages.
    pub audit_id: String,
    /// `ResponseStarted` or `ResponseComplete` (`RequestReceived` is omitted
    /// by the testbed's policy), or `Panic`.
    pub stage: String,
    /// The request.
    pub event: AuditEvent,
}

impl AuditRecord {
    /// Parses one line; `None` for a line that is not an audit event.
    pub fn parse(line: &str) -> Option<AuditRecord> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        if value["kind"] != "Event" {
            return None;
        }
        Some(AuditRecord {
            audit_id: value["auditID"].as_str().unwrap_or_default().to_owned(),
            stage: value["stage"].as_str().unwrap_or_default().to_owned(),
            event: AuditEvent::from_audit_json(&value),
        })
    }
}

/// A position in the audit log: a file (by inode) and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditMark {
    inode: u64,
    offset: u64,
}

impl AuditMark {
    /// The start of whatever log there is.
    pub const START: AuditMark = AuditMark {
        inode: 0,
        offset: 0,
    };
}

/// A testbed's audit log.
#[derive(Clone, Debug)]
pub struct AuditLog {
    dir: PathBuf,
}

impl AuditLog {
    /// The log of the testbed in `dir` (the directory of its kubeconfig).
    pub fn new(dir: &Path) -> AuditLog {
        AuditLog {
            dir: dir.to_owned(),
        }
    }

    /// Where the log ends now (the start, if there is no log yet).
    pub fn mark(&self) -> io::Result<AuditMark> {
        match std::fs::metadata(self.dir.join(LIVE)) {
            Ok(meta) => Ok(AuditMark {
                inode: meta.ino(),
                offset: meta.len(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AuditMark::START),
            Err(e) => Err(e),
        }
    }

    /// Calls `each` with every complete line written after `mark` that
    /// parses (a line being written is left for the next read), and
    /// returns the mark after the last line read.
    pub fn read_since(
        &self,
        mark: &AuditMark,
        mut each: impl FnMut(AuditRecord),
    ) -> io::Result<AuditMark> {
        let mut end = *mark;
        for (path, inode, start) in self.files_since(mark)? {
            let mut file = File::open(&path)?;
            if file.metadata()?.ino() != inode {
                continue; // rotated between listing and opening: read next time
            }
            file.seek(SeekFrom::Start(start))?;
            let mut reader = BufReader::new(file);
            let mut offset = start;
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                offset += n as u64;
                if let Some(record) = AuditRecord::parse(&String::from_utf8_lossy(&line)) {
                    each(record);
                }
            }
            end = AuditMark { inode, offset };
        }
        Ok(end)
    }

    /// Every record written after `mark`.
    pub fn records_since(&self, mark: &AuditMark) -> io::Result<Vec<AuditRecord>> {
        let mut records = Vec::new();
        self.read_since(mark, |r| records.push(r))?;
        Ok(records)
    }

    /// The files holding what was written after `mark`, oldest first, each
    /// with its inode and the offset to read from.
    fn files_since(&self, mark: &AuditMark) -> io::Result<Vec<(PathBuf, u64, u64)>> {
        let mut rotated = Vec::new();
        let mut live = None;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("audit") || !name.ends_with(".log") {
                continue;
            }
            let meta = entry.metadata()?;
            if name == LIVE {
                live = Some((entry.path(), meta.ino(), meta.len()));
            } else {
                rotated.push((name, entry.path(), meta.ino(), meta.len()));
            }
        }
        // `audit-<time>.log`: the names sort in the order they were rotated.
        rotated.sort();
        let mut files: Vec<(PathBuf, u64, u64)> = rotated
            .into_iter()
            .map(|(_, path, inode, len)| (path, inode, len))
            .collect();
        files.extend(live);
        let first = files.iter().position(|(_, inode, _)| *inode == mark.inode);
        Ok(match first {
            Some(i) => files
                .into_iter()
                .skip(i)
                .enumerate()
                .map(|(k, (path, inode, len))| {
                    // A file shorter than the mark was truncated: read it all.
                    let start = if k == 0 && mark.offset <= len {
                        mark.offset
                    } else {
                        0
                    };
                    (path, inode, start)
                })
                .collect(),
            // The marked file is gone (or there was none): the live log, whole.
            None => files
                .into_iter()
                .filter(|(path, _, _)| path.file_name().is_some_and(|n| n == LIVE))
                .map(|(path, inode, _)| (path, inode, 0))
                .collect(),
        })
    }
}
