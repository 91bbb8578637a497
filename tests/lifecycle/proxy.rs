//! A TCP forwarder on 127.0.0.1 between the controller and the API server,
//! which a test can hold closed, open, or stall: the controller's TLS passes
//! through untouched. It lets a test observe states that a healthy API server
//! makes too brief to see (caches not yet synced, writes hanging during a drain).

// Shared by several test binaries, each of which uses only a part.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// New connections wait (accepted, not forwarded) until the mode changes.
    Hold,
    /// Connections are forwarded.
    Open,
    /// Every connection stops moving bytes (a hung server) until the mode changes.
    Stall,
}

/// The running forwarder; dropping it closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    _tasks: JoinSet<()>,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:<free port> to `upstream`, in `mode`.
    pub async fn start(upstream: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(watch::channel(mode).0);
        let mut tasks = JoinSet::new();
        let accept_mode = mode.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(forward(client, upstream, accept_mode.subscribe()));
            }
        });
        Proxy {
            addr,
            mode,
            _tasks: tasks,
        }
    }

    /// The address to give the controller instead of the API server's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the proxy does from now on.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if mode.wait_for(|m| *m == Mode::Open).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, mode.clone()),
        pump(server_read, client_write, mode),
    );
}

/// Copies one direction chunk by chunk, holding each chunk while stalled,
/// so a stall looks like a hung server and ending it resumes the stream.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if mode.wait_for(|m| *m != Mode::Stall).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
