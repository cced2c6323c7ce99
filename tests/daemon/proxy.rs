//! A TCP proxy on 127.0.0.1 in front of the test S3 server that can be taken down: while
//! down, every open connection is cut and new ones are closed as soon as they are
//! accepted (an outage, as the client sees it). Up again, it forwards as before.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    /// `http://127.0.0.1:port`, to use as `AWS_ENDPOINT`.
    pub endpoint: String,
    down: Arc<AtomicBool>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards to `upstream` (`http://host:port`). Must be called inside a runtime.
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream address");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let listener = TcpListener::from_std(listener).unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(tokio::sync::watch::channel(0u64).0);
        let task = {
            let (down, cut) = (down.clone(), cut.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if down.load(Ordering::Acquire) {
                        drop(inbound);
                        continue;
                    }
                    let mut cut = cut.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Proxy {
            endpoint,
            down,
            cut,
            task,
        }
    }

    /// Takes the proxy down (cutting every open connection) or brings it back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Release);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set_down(true);
        self.task.abort();
    }
}
