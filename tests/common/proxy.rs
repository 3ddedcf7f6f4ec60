//! A TCP proxy a test can cut, to make a server (a broker, a KMS) vanish and come back while
//! the server itself keeps running and keeps its state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy that can be cut: `up = false` closes every open connection and refuses new
/// ones until `up` is true again.
pub struct Proxy {
    up: watch::Sender<bool>,
    /// Connections accepted and forwarded.
    pub connections: Arc<AtomicUsize>,
    /// Forwarded connections closed by a cut.
    pub cut_connections: Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen).await.unwrap();
        let (up, up_rx) = watch::channel(true);
        let connections = Arc::new(AtomicUsize::new(0));
        let cut_connections = Arc::new(AtomicUsize::new(0));
        let (accepted, cut) = (connections.clone(), cut_connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !*up_rx.borrow() {
                    drop(client); // refused while down
                    continue;
                }
                accepted.fetch_add(1, Ordering::Relaxed);
                let mut up = up_rx.clone();
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let cut_off = async {
                        let _ = up.wait_for(|up| !*up).await;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_off => { cut.fetch_add(1, Ordering::Relaxed); }
                    }
                    // Dropping both sockets closes them: the client sees the broker vanish.
                });
            }
        });
        Proxy {
            up,
            connections,
            cut_connections,
        }
    }

    /// Up: forward; down: close every forwarded connection and refuse new ones.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}
