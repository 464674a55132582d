//! SSH into a test VM with russh: key generation (Ed25519), key auth and
//! `exec`, plus the probes a boot test needs (identification banner, offered
//! auth methods, one password attempt).
//!
//! Host keys are accepted without checking (a throw-away test VM), but the
//! fingerprint is recorded ([`SshSession::host_key_fingerprint`]).
//!
//! Behind QEMU's user-mode networking the TCP connection to a forwarded port
//! always succeeds, even while nothing listens in the guest; slirp then closes
//! it. So we read the server's identification line ourselves first: no line
//! means "not up yet" ([`SshError::NoBanner`]), a line followed by a refused
//! key means "up, but the key is not (yet) authorised" ([`SshError::KeyRejected`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use russh::client::{self, AuthResult};
use russh::keys::ssh_key::{self, HashAlg, LineEnding, PrivateKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, MethodKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh {addr}: cannot connect")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("ssh {addr}: {what} timed out after {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        what: String,
        timeout: Duration,
    },
    #[error("ssh {addr}: connection closed before the server sent its identification line (sshd not up yet?){}", if received.is_empty() { String::new() } else { format!("; got {received:?}") })]
    NoBanner { addr: SocketAddr, received: String },
    #[error("ssh {addr}: server {banner:?} answered, but the handshake failed")]
    Handshake {
        addr: SocketAddr,
        banner: String,
        #[source]
        source: Box<russh::Error>,
    },
    #[error("ssh {addr}: server {banner:?} answered, but rejected the key for user {user:?} (server offers: {})", offered.join(","))]
    KeyRejected {
        addr: SocketAddr,
        banner: String,
        user: String,
        offered: Vec<String>,
    },
    #[error("ssh {addr}: {what} failed")]
    Protocol {
        addr: SocketAddr,
        what: String,
        #[source]
        source: Box<russh::Error>,
    },
    #[error("ssh: key generation or encoding failed")]
    Key(#[source] ssh_key::Error),
}

/// An Ed25519 key pair for one test run, comment "ibkit".
#[derive(Clone)]
pub struct SshKey {
    private: Arc<PrivateKey>,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKey")
            .field("public", &self.public_openssh())
            .finish_non_exhaustive()
    }
}

impl SshKey {
    pub fn generate() -> Result<SshKey, SshError> {
        let seed: [u8; 32] = rand::random();
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let mut private = PrivateKey::from(pair);
        private.set_comment("ibkit");
        Ok(SshKey {
            private: Arc::new(private),
        })
    }

    /// "ssh-ed25519 AAAA... ibkit", for authorized_keys and cloud-init.
    pub fn public_openssh(&self) -> String {
        self.private
            .public_key()
            .to_openssh()
            .unwrap_or_else(|e| format!("<unencodable key: {e}>"))
    }

    /// The private key in OpenSSH PEM format (for `ssh -i` while debugging).
    pub fn private_openssh(&self) -> Result<String, SshError> {
        self.private
            .to_openssh(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(SshError::Key)
    }

    /// "SHA256:..." of the public key.
    pub fn fingerprint(&self) -> String {
        self.private
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }
}

/// What a remote command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// None when the server sent no exit status (e.g. killed by a signal).
    pub exit_status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }
}

/// Accepts any host key and records its fingerprint.
struct Handler {
    fingerprint: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fp = server_public_key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        if let Ok(mut g) = self.fingerprint.lock() {
            *g = Some(fp);
        }
        Ok(true)
    }
}

/// A TCP stream whose first bytes (already read by us) are replayed.
struct Replay {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connect and read up to and including the "SSH-" identification line
/// (RFC 4253 allows other lines before it). Returns the line and everything read.
async fn open_and_read_banner(addr: SocketAddr) -> Result<(String, Vec<u8>, TcpStream), SshError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| SshError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        // Look for a complete "SSH-" line.
        let mut line_start = 0;
        while let Some(nl) = buf[line_start..].iter().position(|&b| b == b'\n') {
            let line = &buf[line_start..line_start + nl];
            if line.starts_with(b"SSH-") {
                let text = String::from_utf8_lossy(line).trim_end().to_string();
                return Ok((text, buf, stream));
            }
            line_start += nl + 1;
        }
        if buf.len() > 8192 {
            return Err(SshError::NoBanner {
                addr,
                received: String::from_utf8_lossy(&buf[..200]).into_owned(),
            });
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return Err(SshError::NoBanner {
                addr,
                received: String::from_utf8_lossy(&buf).into_owned(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 8,
        ..Default::default()
    })
}

struct Opened {
    handle: client::Handle<Handler>,
    banner: String,
    fingerprint: Arc<Mutex<Option<String>>>,
}

async fn open(addr: SocketAddr) -> Result<Opened, SshError> {
    let (banner, prefix, stream) = open_and_read_banner(addr).await?;
    let fingerprint = Arc::new(Mutex::new(None));
    let handler = Handler {
        fingerprint: fingerprint.clone(),
    };
    let stream = Replay {
        prefix,
        pos: 0,
        inner: stream,
    };
    let handle = client::connect_stream(client_config(), stream, handler)
        .await
        .map_err(|source| SshError::Handshake {
            addr,
            banner: banner.clone(),
            source: Box::new(source),
        })?;
    Ok(Opened {
        handle,
        banner,
        fingerprint,
    })
}

fn method_names(methods: &russh::MethodSet) -> Vec<String> {
    methods.iter().map(String::from).collect()
}

async fn with_timeout<T>(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, SshError>>,
) -> Result<T, SshError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(SshError::Timeout {
            addr,
            what: what.to_string(),
            timeout,
        }),
    }
}

/// An authenticated SSH connection.
pub struct SshSession {
    addr: SocketAddr,
    user: String,
    handle: client::Handle<Handler>,
    banner: String,
    fingerprint: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("banner", &self.banner)
            .finish_non_exhaustive()
    }
}

/// Connect to `addr` and authenticate `user` with `key`, all within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    key: &SshKey,
    timeout: Duration,
) -> Result<SshSession, SshError> {
    with_timeout(addr, "connect and key authentication", timeout, async {
        let Opened {
            mut handle,
            banner,
            fingerprint,
        } = open(addr).await?;
        let proto = |what: &str| {
            let what = what.to_string();
            move |source| SshError::Protocol {
                addr,
                what,
                source: Box::new(source),
            }
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(proto("negotiating the signature hash"))?
            .flatten();
        let res = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.private.clone(), hash))
            .await
            .map_err(proto("public-key authentication"))?;
        match res {
            AuthResult::Success => Ok(SshSession {
                addr,
                user: user.to_string(),
                handle,
                banner,
                fingerprint,
            }),
            AuthResult::Failure {
                remaining_methods, ..
            } => Err(SshError::KeyRejected {
                addr,
                banner,
                user: user.to_string(),
                offered: method_names(&remaining_methods),
            }),
        }
    })
    .await
}

impl SshSession {
    /// Run `command` (through the user's shell) and collect its output and
    /// exit status, within `timeout`.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SshError> {
        let addr = self.addr;
        let what = format!("exec {command:?}");
        with_timeout(addr, &what, timeout, async {
            let proto = |source| SshError::Protocol {
                addr,
                what: what.clone(),
                source: Box::new(source),
            };
            let mut channel = self.handle.channel_open_session().await.map_err(proto)?;
            channel.exec(true, command).await.map_err(proto)?;
            let mut out = ExecOutput::default();
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                    _ => {}
                }
            }
            Ok(out)
        })
        .await
    }

    /// The server's identification line, e.g. "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3".
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// "SHA256:..." of the host key the server presented.
    pub fn host_key_fingerprint(&self) -> String {
        self.fingerprint
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Politely disconnect (errors ignored: the VM may be gone already).
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.handle.disconnect(Disconnect::ByApplication, "", "en"),
        )
        .await;
    }
}

/// Read the server's identification line over plain TCP.
pub async fn banner(addr: SocketAddr, timeout: Duration) -> Result<String, SshError> {
    with_timeout(addr, "reading the identification line", timeout, async {
        open_and_read_banner(addr).await.map(|(b, _, _)| b)
    })
    .await
}

/// The auth methods the server offers `user`, from a "none" attempt, e.g.
/// ["publickey", "password"]. Methods russh does not know are not listed.
pub async fn offered_methods(
    addr: SocketAddr,
    user: &str,
    timeout: Duration,
) -> Result<Vec<String>, SshError> {
    with_timeout(addr, "auth method query", timeout, async {
        let mut o = open(addr).await?;
        let res = o
            .handle
            .authenticate_none(user)
            .await
            .map_err(|source| SshError::Protocol {
                addr,
                what: "\"none\" authentication".into(),
                source: Box::new(source),
            })?;
        let _ = o
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        Ok(match res {
            AuthResult::Success => vec!["none".to_string()],
            AuthResult::Failure {
                remaining_methods, ..
            } => method_names(&remaining_methods),
        })
    })
    .await
}

/// Result of one password attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordOutcome {
    Accepted,
    Rejected,
    NotOffered,
}

/// One password attempt for `user` on a fresh connection.
pub async fn try_password(
    addr: SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<PasswordOutcome, SshError> {
    with_timeout(addr, "password attempt", timeout, async {
        let mut o = open(addr).await?;
        let proto = |what: &'static str| {
            move |source| SshError::Protocol {
                addr,
                what: what.into(),
                source: Box::new(source),
            }
        };
        let first = o
            .handle
            .authenticate_none(user)
            .await
            .map_err(proto("\"none\" authentication"))?;
        let outcome = match first {
            AuthResult::Success => PasswordOutcome::Accepted,
            AuthResult::Failure {
                remaining_methods, ..
            } if !remaining_methods.contains(&MethodKind::Password) => PasswordOutcome::NotOffered,
            AuthResult::Failure { .. } => match o
                .handle
                .authenticate_password(user, password)
                .await
                .map_err(proto("password authentication"))?
            {
                AuthResult::Success => PasswordOutcome::Accepted,
                AuthResult::Failure { .. } => PasswordOutcome::Rejected,
            },
        };
        let _ = o
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        Ok(outcome)
    })
    .await
}

/// Try [`connect`] every second until it works or `timeout` has passed; on
/// timeout the last attempt's error is returned.
pub async fn wait_for_ssh(
    addr: SocketAddr,
    user: &str,
    key: &SshKey,
    timeout: Duration,
) -> Result<SshSession, SshError> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = left
            .min(Duration::from_secs(30))
            .max(Duration::from_secs(1));
        let err = match connect(addr, user, key, per_try).await {
            Ok(s) => {
                tracing::debug!(%addr, attempts, "ssh is up");
                return Ok(s);
            }
            Err(e) => e,
        };
        tracing::trace!(%addr, attempts, "ssh not ready: {err}");
        if Instant::now() + Duration::from_secs(1) >= deadline {
            tracing::debug!(%addr, attempts, "giving up waiting for ssh: {err}");
            return Err(err);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_generation() {
        let k = SshKey::generate().expect("generate");
        let p = k.public_openssh();
        assert!(p.starts_with("ssh-ed25519 AAAA"), "{p}");
        assert!(p.ends_with(" ibkit"), "{p}");
        let k2 = SshKey::generate().expect("generate");
        assert_ne!(p, k2.public_openssh());
        assert!(k.fingerprint().starts_with("SHA256:"));
        let pem = k.private_openssh().expect("pem");
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    }

    #[tokio::test]
    async fn banner_and_errors_against_a_fake_server() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            // First connection: a pre-banner line, then the banner.
            if let Ok((mut s, _)) = listener.accept().await {
                let _ = s
                    .write_all(b"hello\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
                    .await;
            }
            // Second: closed at once, like slirp with nothing listening.
            if let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let b = banner(addr, Duration::from_secs(5)).await.expect("banner");
        assert_eq!(b, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3");
        let err = banner(addr, Duration::from_secs(5))
            .await
            .expect_err("closed");
        assert!(matches!(err, SshError::NoBanner { .. }), "{err}");

        // Nothing listening at all: a connect error naming the address.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = free.local_addr().expect("addr");
        drop(free);
        let key = SshKey::generate().expect("key");
        let err = wait_for_ssh(dead, "ibkit", &key, Duration::from_millis(1500))
            .await
            .expect_err("nothing there");
        assert!(matches!(err, SshError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&dead.to_string()));
    }
}
