//! The QEMU backend's firewall (nftables): a VM on the bridge reaches the
//! host only for DHCP and the service's port, and nothing beyond the
//! bridge. VMs still reach each other (bridged, not filtered here), and
//! the host still reaches them (its connections' answers are
//! `established`).
//!
//! One table per bridge, `inet ibkit_<bridge>`, written to
//! `STATE/firewall.nft` and loaded with `nft -f` as one transaction that
//! replaces the table whole. The service ports are the union of the ports
//! of every service URL a VM was created with (`STATE/firewall.ports`),
//! so a deployment made against another service port keeps its way in.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ibkit_support::fs::write_atomic;
use ibkit_vm::command::CommandError;

use super::{QemuBackend, io_err};
use crate::backend::BackendError;

/// `nft`: `$IBKIT_NFT` or `nft`.
fn nft_binary() -> String {
    std::env::var("IBKIT_NFT").unwrap_or_else(|_| "nft".into())
}

/// `ibkit_` + the bridge name with anything but letters and digits as `_`.
pub(super) fn table_name(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("ibkit_{safe}")
}

/// The nft script that replaces the bridge's table: DHCP and `ports` (TCP)
/// on the host, answers to the host's own connections, nothing else in
/// from the bridge, nothing routed out of it.
pub(super) fn ruleset(bridge: &str, ports: &BTreeSet<u16>) -> String {
    let table = table_name(bridge);
    let elements = if ports.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!("\n        elements = {{ {} }}", list.join(", "))
    };
    // The empty `table` first makes `delete` succeed when it is new.
    format!(
        "# written by ibkit deploy (QEMU backend): what VMs on {bridge} may reach\n\
         table inet {table} {{}}\n\
         delete table inet {table}\n\
         table inet {table} {{\n    \
             set service_ports {{\n        type inet_service{elements}\n    }}\n    \
             chain input {{\n        \
                 type filter hook input priority filter; policy accept;\n        \
                 iifname \"{bridge}\" ct state established,related accept\n        \
                 iifname \"{bridge}\" udp dport 67 accept\n        \
                 iifname \"{bridge}\" tcp dport @service_ports accept\n        \
                 iifname \"{bridge}\" counter drop\n    \
             }}\n    \
             chain forward {{\n        \
                 type filter hook forward priority filter; policy accept;\n        \
                 iifname \"{bridge}\" oifname != \"{bridge}\" counter drop\n    \
             }}\n\
         }}\n"
    )
}

impl QemuBackend {
    fn firewall_script(&self) -> PathBuf {
        self.state_dir.join("firewall.nft")
    }

    fn firewall_ports_file(&self) -> PathBuf {
        self.state_dir.join("firewall.ports")
    }

    /// The port a VM may open on the host for `service_url`; an error when
    /// the URL names another host, which the VM could not reach.
    pub(super) fn service_port(&self, service_url: &str) -> Result<u16, BackendError> {
        let (host, port) = crate::service_url::host_and_port(service_url)
            .map_err(|e| BackendError::Other(e.to_string()))?;
        let bridge_addr = self.network.host_addr;
        if host.parse::<Ipv4Addr>().ok() != Some(bridge_addr) {
            return Err(BackendError::Other(format!(
                "service URL {service_url}: VMs on the QEMU backend reach only the bridge \
                 address {bridge_addr} (the service must listen there; \
                 --guest-service-url must name it)"
            )));
        }
        Ok(port)
    }

    fn firewall_ports(&self) -> Result<BTreeSet<u16>, BackendError> {
        let path = self.firewall_ports_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .split_whitespace()
                .map(|p| {
                    p.parse::<u16>().map_err(|_| {
                        BackendError::Other(format!("{}: {p:?} is not a port", path.display()))
                    })
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(io_err("cannot read", &path, e)),
        }
    }

    /// Loads the bridge's table with the service ports so far plus
    /// `port`. Called under the backend's lock before each VM starts.
    pub(super) async fn open_service_port(&self, port: u16) -> Result<(), BackendError> {
        let mut ports = self.firewall_ports()?;
        ports.insert(port);
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let ports_file = self.firewall_ports_file();
        write_atomic(
            &ports_file,
            format!("{}\n", list.join(" ")).as_bytes(),
            0o600,
        )
        .map_err(|e| io_err("cannot write", &ports_file, e))?;
        let script = self.firewall_script();
        write_atomic(
            &script,
            ruleset(&self.network.bridge, &ports).as_bytes(),
            0o600,
        )
        .map_err(|e| io_err("cannot write", &script, e))?;
        let script_arg = script.display().to_string();
        ibkit_vm::command::run(nft_binary(), &["-f", script_arg.as_str()])
            .await
            .map_err(|e| {
                // Only a missing `nft` gets the hint: a rule refused by the
                // kernel can say "No such file or directory" too.
                let missing = matches!(&e, CommandError::Spawn { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound);
                let mut err = super::network::command_err(e);
                if missing && let BackendError::Command { stderr, .. } = &mut err {
                    stderr.push_str(
                        " (the QEMU backend's firewall needs nftables: apt install nftables)",
                    );
                }
                err
            })?;
        tracing::info!(bridge = %self.network.bridge, ports = %list.join(","), "firewall loaded");
        Ok(())
    }

    /// Removes the bridge's table (with the network).
    pub(super) async fn remove_firewall(&self) -> Result<(), BackendError> {
        let table = table_name(&self.network.bridge);
        let listed = ibkit_vm::command::run(nft_binary(), &["list", "tables"]).await;
        if let Ok(out) = listed
            && String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == format!("table inet {table}"))
        {
            ibkit_vm::command::run(nft_binary(), &["delete", "table", "inet", table.as_str()])
                .await
                .map_err(super::network::command_err)?;
        }
        for f in [self.firewall_ports_file(), self.firewall_script()] {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }
}

/// The bridge's table gone, whatever the state says ([`super::force_cleanup`]).
pub(super) fn force_remove(bridge: &str) {
    let _ = std::process::Command::new(nft_binary())
        .args(["delete", "table", "inet", &table_name(bridge)])
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_opens_dhcp_and_the_service_ports_only() {
        let r = ruleset("ibk-br0", &BTreeSet::from([8443, 9443]));
        assert!(r.contains("table inet ibkit_ibk_br0 {\n"), "{r}");
        assert!(r.contains("elements = { 8443, 9443 }"), "{r}");
        assert!(r.contains("iifname \"ibk-br0\" udp dport 67 accept"), "{r}");
        assert!(r.contains("iifname \"ibk-br0\" counter drop"), "{r}");
        assert!(
            r.contains("iifname \"ibk-br0\" oifname != \"ibk-br0\" counter drop"),
            "{r}"
        );
        // The replacement is one transaction: create, delete, define.
        let order: Vec<usize> = [
            "table inet ibkit_ibk_br0 {}",
            "delete table",
            "set service_ports",
        ]
        .iter()
        .map(|s| r.find(s).expect(s))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{r}");
        let empty = ruleset("ibkbr0", &BTreeSet::new());
        assert!(!empty.contains("elements"), "{empty}");
    }

    #[test]
    fn a_service_url_off_the_bridge_address_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b =
            QemuBackend::new(dir.path(), super::super::NetworkConfig::default()).expect("backend");
        assert_eq!(b.service_port("https://10.77.0.1:8443/").expect("ok"), 8443);
        assert_eq!(b.service_port("https://10.77.0.1").expect("ok"), 443);
        for url in [
            "https://127.0.0.1:8443",
            "https://svc.example:8443",
            "ftp://x",
        ] {
            let e = b.service_port(url).expect_err(url).to_string();
            assert!(e.contains(url) || e.contains("http(s)"), "{e}");
        }
        let e = b
            .service_port("https://127.0.0.1:8443")
            .expect_err("loopback");
        assert!(
            e.to_string()
                .contains("reach only the bridge address 10.77.0.1"),
            "{e}"
        );
    }
}
