//! The service's URL as a VM reaches it.

use ibkit_client::ClientError;

/// An http(s) URL's parts, as far as ibkit needs them.
struct Parts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
    path: &'a str,
}

fn parts(url: &str) -> Result<Parts<'_>, ClientError> {
    let bad = |why: &str| ClientError::Setup(format!("service URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "http" | "https"))
        .ok_or_else(|| bad("not an http(s) URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))
        })
        .transpose()?;
    Ok(Parts {
        scheme,
        host,
        port,
        path,
    })
}

/// `url` with its host replaced (scheme, port and path kept): the service
/// as a VM reaches it, e.g. `https://127.0.0.1:8443` → `https://10.77.0.1:8443`.
pub fn with_host(url: &str, host: &str) -> Result<String, ClientError> {
    let p = parts(url)?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(match p.port {
        Some(port) => format!("{}://{host}:{port}{}", p.scheme, p.path),
        None => format!("{}://{host}{}", p.scheme, p.path),
    })
}

/// The host and TCP port `url` connects to (443 or 80 when it names none).
pub fn host_and_port(url: &str) -> Result<(String, u16), ClientError> {
    let p = parts(url)?;
    let default = if p.scheme == "https" { 443 } else { 80 };
    Ok((p.host.to_string(), p.port.unwrap_or(default)))
}

#[cfg(test)]
mod tests {
    use super::{host_and_port, with_host};

    #[test]
    fn the_guest_url_keeps_scheme_port_and_path() {
        let cases = [
            ("https://127.0.0.1:8443", "https://10.77.0.1:8443"),
            ("https://localhost:8443/", "https://10.77.0.1:8443/"),
            ("http://[::1]:80/x", "http://10.77.0.1:80/x"),
            ("https://svc.example", "https://10.77.0.1"),
        ];
        for (from, to) in cases {
            assert_eq!(with_host(from, "10.77.0.1").expect(from), to);
        }
        assert!(with_host("ftp://x", "10.0.0.1").is_err());
        assert!(with_host("https://x:port", "10.0.0.1").is_err());
    }

    #[test]
    fn host_and_port_fill_in_the_scheme_default() {
        let cases = [
            ("https://10.77.0.1:8443/", ("10.77.0.1", 8443)),
            ("https://10.77.0.1", ("10.77.0.1", 443)),
            ("http://user@svc.example/x", ("svc.example", 80)),
            ("http://[fd00::1]:81", ("fd00::1", 81)),
        ];
        for (url, (host, port)) in cases {
            assert_eq!(host_and_port(url).expect(url), (host.to_string(), port));
        }
        assert!(host_and_port("https://x:99999").is_err());
        assert!(host_and_port("file:///x").is_err());
    }
}
