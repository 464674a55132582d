//! A small QMP client over a tokio `UnixStream`.
//!
//! Commands and replies are untyped `serde_json::Value`s. Events (anything with
//! an `"event"` key) that arrive while waiting for a reply are kept in
//! [`Qmp::events`], whatever their name: an event this code has never heard of
//! must not break the connection (the typed `qapi` crate fails exactly there).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Default time allowed for one command's reply.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP: cannot connect to {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: no {what} on {} within {timeout:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        what: String,
        timeout: Duration,
    },
    #[error("QMP: I/O error on {} during {what}", socket.display())]
    Io {
        socket: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: {} closed the connection during {what}", socket.display())]
    Closed { socket: PathBuf, what: String },
    #[error("QMP: unexpected message on {} during {what}: {message}", socket.display())]
    Protocol {
        socket: PathBuf,
        what: String,
        message: String,
    },
    #[error("QMP: command {command:?} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    greeting: Value,
    events: Vec<Value>,
    next_id: u64,
    command_timeout: Duration,
}

impl Qmp {
    /// Connect, read the greeting and negotiate capabilities (`qmp_capabilities`),
    /// all within `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let fut = async {
            let stream = UnixStream::connect(socket)
                .await
                .map_err(|source| QmpError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })?;
            let (r, w) = stream.into_split();
            let mut qmp = Qmp {
                socket: socket.to_path_buf(),
                reader: BufReader::new(r),
                writer: w,
                greeting: Value::Null,
                events: Vec::new(),
                next_id: 1,
                command_timeout: timeout.max(DEFAULT_COMMAND_TIMEOUT),
            };
            let greeting = qmp.read_message("the greeting").await?;
            if greeting.get("QMP").is_none() {
                return Err(QmpError::Protocol {
                    socket: socket.to_path_buf(),
                    what: "the greeting".into(),
                    message: greeting.to_string(),
                });
            }
            qmp.greeting = greeting;
            qmp.execute_inner("qmp_capabilities", None).await?;
            Ok(qmp)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(QmpError::Timeout {
                socket: socket.to_path_buf(),
                what: "greeting and capabilities negotiation".into(),
                timeout,
            }),
        }
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ..., "capabilities": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Time allowed for each later command's reply (default 60 s).
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// Run `command` and return its `"return"` value. A `{"error": ...}` reply
    /// gives [`QmpError::Command`]. Events that arrive first are kept.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let timeout = self.command_timeout;
        match tokio::time::timeout(timeout, self.execute_inner(command, arguments)).await {
            Ok(r) => r,
            Err(_) => Err(QmpError::Timeout {
                socket: self.socket.clone(),
                what: format!("reply to {command:?}"),
                timeout,
            }),
        }
    }

    /// Every event received so far, oldest first.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Remove and return the events received so far.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    async fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let what = format!("command {command:?}");
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                socket: self.socket.clone(),
                what: what.clone(),
                source,
            })?;
        loop {
            let reply = self.read_message(&what).await?;
            if reply.get("event").is_some() {
                continue; // kept by read_message
            }
            // Replies carry our id back; tolerate a missing one.
            if let Some(rid) = reply.get("id")
                && rid.as_u64() != Some(id)
            {
                tracing::debug!(socket = %self.socket.display(), "QMP: skipping reply for another id: {reply}");
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol {
                socket: self.socket.clone(),
                what,
                message: reply.to_string(),
            });
        }
    }

    /// Read one JSON message (one line); events are appended to `self.events`
    /// and returned too.
    async fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .await
                .map_err(|source| QmpError::Io {
                    socket: self.socket.clone(),
                    what: what.to_string(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Closed {
                    socket: self.socket.clone(),
                    what: what.to_string(),
                });
            }
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(trimmed).map_err(|e| QmpError::Protocol {
                socket: self.socket.clone(),
                what: what.to_string(),
                message: format!("invalid JSON ({e}): {trimmed}"),
            })?;
            if v.get("event").is_some() {
                tracing::debug!(socket = %self.socket.display(), "QMP event: {v}");
                self.events.push(v.clone());
            }
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QMP server: greeting, accepts qmp_capabilities, then answers
    /// `query-status` after sending an event no schema knows, and answers
    /// `bogus` with an error.
    async fn fake_server(listener: UnixListener) {
        let (stream, _) = listener.accept().await.expect("accept");
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n")
            .await
            .expect("greeting");
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).expect("client sends JSON");
            let id = v["id"].clone();
            let reply = match v["execute"].as_str() {
                Some("qmp_capabilities") => json!({"return": {}, "id": id}),
                Some("query-status") => {
                    let ev = json!({"timestamp": {"seconds": 1, "microseconds": 2},
                        "event": "IBKIT_FUTURE_EVENT_NOBODY_KNOWS", "data": {"x": [1, 2]}});
                    w.write_all(format!("{ev}\r\n").as_bytes())
                        .await
                        .expect("event");
                    json!({"return": {"status": "running", "running": true}, "id": id})
                }
                _ => json!({"error": {"class": "CommandNotFound",
                    "desc": format!("The command {} has not been found", v["execute"])}, "id": id}),
            };
            w.write_all(format!("{reply}\r\n").as_bytes())
                .await
                .expect("reply");
        }
    }

    #[tokio::test]
    async fn unknown_event_between_command_and_reply_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(fake_server(listener));

        let mut qmp = Qmp::connect(&sock, Duration::from_secs(5))
            .await
            .expect("connect");
        assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 10);
        let r = qmp
            .execute("query-status", None)
            .await
            .expect("query-status");
        assert_eq!(r["status"], "running");
        assert_eq!(qmp.events().len(), 1);
        assert_eq!(qmp.events()[0]["event"], "IBKIT_FUTURE_EVENT_NOBODY_KNOWS");

        let err = qmp
            .execute("bogus", Some(json!({"a": 1})))
            .await
            .expect_err("bogus must fail");
        match &err {
            QmpError::Command { command, class, .. } => {
                assert_eq!(command, "bogus");
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("unexpected error {other:?}"),
        }
        // The connection still works after the error and the event.
        let r = qmp.execute("query-status", None).await.expect("again");
        assert_eq!(r["running"], true);
        assert_eq!(qmp.take_events().len(), 2);
        drop(qmp);
        server.await.expect("server task");
    }

    #[tokio::test]
    async fn connect_errors_name_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("nothing.sock");
        let err = Qmp::connect(&sock, Duration::from_secs(1))
            .await
            .expect_err("no server");
        assert!(err.to_string().contains("nothing.sock"), "{err}");

        // A server that never greets: timeout error.
        let sock2 = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&sock2).expect("bind");
        let err = Qmp::connect(&sock2, Duration::from_millis(300))
            .await
            .expect_err("silent server");
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    }
}
