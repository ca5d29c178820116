//! The control socket: a Unix stream socket where `vxdp status` (and friends) ask the running
//! daemon for its state. One request line in, one JSON document out, then the connection
//! closes. Only root can connect (mode 0600): the answer names peers and addresses.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

/// Default path of the control socket.
pub const DEFAULT_PATH: &str = "/run/vxdp/control.sock";

/// Answers one request (e.g. `status`) with a JSON document.
pub type Handler = Arc<dyn Fn(&str) -> serde_json::Value + Send + Sync>;

/// A bound control socket; the file is removed on drop.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path`, replacing a stale socket file but refusing to take over a live one.
    pub async fn bind(path: &Path) -> anyhow::Result<ControlSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("creating the control socket directory {}", dir.display())
            })?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                bail!(
                    "another vxdp is already answering on {} : stop it first, or give this one \
                     its own --control-socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale control socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {} to root", path.display()))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves requests until the task is dropped. A `handover` request (a successor vxdp, see
    /// `takeover`) is not answered here: its connection goes to `handovers`, for the event
    /// loop, which alone can stop the dataplane.
    pub async fn serve(
        self,
        handler: Handler,
        handovers: tokio::sync::mpsc::Sender<(std::os::unix::net::UnixStream, String)>,
    ) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            let handovers = handovers.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, handler, handovers).await {
                    tracing::debug!("control socket client: {e:#}");
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(
    stream: UnixStream,
    handler: Handler,
    handovers: tokio::sync::mpsc::Sender<(std::os::unix::net::UnixStream, String)>,
) -> anyhow::Result<()> {
    // Byte by byte up to the newline: nothing after it may be read away from a handover
    // connection (the successor sends nothing more, but the socket is handed on whole).
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        stream.readable().await?;
        match stream.try_read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if line.split_whitespace().next() == Some(crate::takeover::REQUEST) {
        let std_stream = stream.into_std()?;
        std_stream.set_nonblocking(false)?;
        handovers
            .send((std_stream, line.trim().to_string()))
            .await
            .map_err(|_| anyhow::anyhow!("the daemon is stopping: no handover"))?;
        return Ok(());
    }
    let (_, mut write) = stream.into_split();
    let reply = handler(line.trim());
    let mut body = serde_json::to_vec_pretty(&reply)?;
    body.push(b'\n');
    write.write_all(&body).await?;
    write.shutdown().await?;
    Ok(())
}

/// Sends `request` to the daemon at `path` and returns its JSON answer.
pub fn query(path: &Path, request: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to vxdp's control socket {}: is `vxdp run` running (with the same \
             --control-socket), and are you root?",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    serde_json::from_str(&body).with_context(|| format!("vxdp answered {body:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_a_request_and_refuses_a_second_daemon() {
        let dir = std::env::temp_dir().join(format!("vxdp-cs-{}", std::process::id()));
        let path = dir.join("control.sock");
        let sock = ControlSocket::bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (handovers, _rx) = tokio::sync::mpsc::channel(1);
        let server = tokio::spawn(sock.serve(
            Arc::new(|req: &str| serde_json::json!({ "asked": req })),
            handovers,
        ));
        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || query(&p, "status"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply["asked"], "status");
        let err = ControlSocket::bind(&path).await.unwrap_err().to_string();
        assert!(err.contains("already answering"), "{err}");
        server.abort();
        let _ = server.await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
