//! A TCP gate on 127.0.0.1 in front of the API server: connections are
//! accepted but held until the gate opens, then forwarded untouched (TLS
//! passes through; the serving certificate covers 127.0.0.1). It lets the
//! start section time "API server answers → ready" apart from the process's
//! own start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running gate; dropping it stops accepting (open connections end with their peers).
pub struct Gate {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Gate {
    /// A closed gate forwarding to `upstream` once opened.
    pub async fn start(upstream: SocketAddr) -> Result<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, opened) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut opened = opened.clone();
                tokio::spawn(async move {
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Ok(Gate { addr, open, task })
    }

    /// Lets held and new connections through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// A copy of `kubeconfig` whose server is this gate, written as `path`.
    pub fn kubeconfig(&self, kubeconfig: &Path, path: PathBuf) -> Result<PathBuf> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let mut config: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let clusters = config["clusters"]
            .as_sequence_mut()
            .context("kubeconfig without clusters")?;
        for cluster in clusters {
            cluster["cluster"]["server"] = format!("https://{}", self.addr).into();
        }
        std::fs::write(&path, serde_yaml::to_string(&config)?)?;
        Ok(path)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API server's address in an admin kubeconfig (`https://127.0.0.1:PORT`).
pub fn apiserver_addr(kubeconfig: &Path) -> Result<SocketAddr> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let config: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("kubeconfig without a server")?;
    server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("server {server} is not https://IP:PORT"))
}
