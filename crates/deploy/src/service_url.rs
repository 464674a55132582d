//! The service's URL as a VM reaches it.

use ibkit_client::ClientError;

/// `url` with its host replaced (scheme, port and path kept): the service
/// as a VM reaches it, e.g. `https://127.0.0.1:8443` → `https://10.77.0.1:8443`.
pub fn with_host(url: &str, host: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::Setup(format!("service URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "http" | "https"))
        .ok_or_else(|| bad("not an http(s) URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (_, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        after.strip_prefix(':')
    } else {
        authority.rsplit_once(':').map(|(_, p)| p)
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(bad("the port is not a number"));
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::with_host;

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
}
