//! A fake Docker engine for unit tests: a Unix socket that reads each request's head and
//! writes what the test's handler answers for its request line. One request per connection
//! (bollard's hyper client reconnects when told `Connection: close`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fake writes for one request.
pub enum Reply {
    /// These bytes, then the connection closes.
    Close(String),
    /// These bytes, then the connection is held open (a stream with nothing more to say).
    Hold(String),
}

/// `200 OK` with a JSON body.
pub fn json(body: &str) -> Reply {
    Reply::Close(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Serve `dir/docker.sock`; `answer` gets each request line. Returns the `unix://` address.
pub async fn serve<F, Fut>(dir: &Path, answer: F) -> String
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let path = dir.join("docker.sock");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string();
                match answer(line).await {
                    Reply::Close(bytes) => {
                        let _ = s.write_all(bytes.as_bytes()).await;
                    }
                    Reply::Hold(bytes) => {
                        let _ = s.write_all(bytes.as_bytes()).await;
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    format!("unix://{}", path.display())
}
