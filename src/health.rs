//! The health endpoint flanneld users probe (`--healthz-ip`, `--healthz-port`): `/healthz`
//! answers 200 while the daemon runs, `/readyz` 200 only once the subnet file is written (503
//! before), `/metrics` the Prometheus text exposition. A tiny HTTP/1.0-style responder: one
//! request per connection, no keep-alive, nothing to configure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Produces the `/metrics` body.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Shared readiness flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the daemon ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Binds the endpoint; serve it with [`serve`].
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the health endpoint {addr} (--healthz-ip/--healthz-port)")
    })
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: TcpListener, ready: Readiness, metrics: MetricsSource) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (ready, metrics) = (ready.clone(), Arc::clone(&metrics));
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), answer(stream, ready, metrics)).await;
        });
    }
}

fn route(request: &str, ready: &Readiness, metrics: &MetricsSource) -> (u16, &'static str, String) {
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "method not allowed\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if ready.is_ready() => (200, "text/plain", "ok\n".into()),
        "/readyz" => (
            503,
            "text/plain",
            "not ready: no lease or subnet file yet\n".into(),
        ),
        "/metrics" => (200, "text/plain; version=0.0.4", metrics()),
        _ => (
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

async fn answer(
    mut stream: TcpStream,
    ready: Readiness,
    metrics: MetricsSource,
) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let n = stream.read(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..n]);
    let request = head.lines().next().unwrap_or("");
    let (code, ctype, body) = route(request, &ready, &metrics);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let body = if request.starts_with("HEAD ") {
        String::new()
    } else {
        body
    };
    let reply = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readiness_turns_green_only_when_set() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Readiness::default();
        let task = tokio::spawn(serve(
            listener,
            ready.clone(),
            Arc::new(|| "vxdp_up 1\n".to_string()),
        ));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.set_ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(
            m.starts_with("HTTP/1.1 200") && m.ends_with("vxdp_up 1\n"),
            "{m}"
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
