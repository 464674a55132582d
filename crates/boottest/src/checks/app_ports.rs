//! APP-PORTS live: after first boot, with the app healthy, the sockets
//! listening on non-loopback addresses (`ss -Hltunp`) are exactly SSH
//! (22/tcp), the manifest's declared ports and the DHCP client's port
//! (68/udp, 546/udp for DHCPv6), which the cloud's networking needs.

use ibkit_rules::{Evidence, Outcome};

use super::first_guest;
use crate::observe::Observations;

/// Client ports the cloud's DHCP needs open (APP-NET).
const DHCP_CLIENT: &[(u16, &str)] = &[(68, "udp"), (546, "udp")];

pub fn check(o: &Observations) -> Outcome {
    let g = match first_guest(o) {
        Ok(g) => g,
        Err(unknown) => return unknown,
    };
    let Some(listeners) = &g.listeners else {
        return Outcome::unknown(format!(
            "`ss -Hltunp` failed in the guest: {}",
            g.listeners_error.as_deref().unwrap_or("no output")
        ));
    };
    let mut out = Outcome::default();
    let declared = |port: u16, proto: &str| {
        o.declared_ports
            .iter()
            .any(|d| *d == format!("{port}/{proto}"))
    };
    let mut allowed = Vec::new();
    for l in listeners.iter().filter(|l| !l.is_loopback()) {
        let ssh = l.port == 22 && l.proto == "tcp";
        let dhcp = DHCP_CLIENT
            .iter()
            .any(|(p, pr)| *p == l.port && *pr == l.proto);
        if ssh || dhcp || declared(l.port, &l.proto) {
            allowed.push(l.describe());
        } else if o.manifest_given {
            out.fail(
                "undeclared-listener",
                format!(
                    "{} listens but is neither SSH nor a port the manifest declares",
                    l.describe()
                ),
                Evidence::note("ss -Hltunp after first boot"),
            );
        } else {
            out.warn(
                "undeclared-listener",
                format!(
                    "{} listens; without a manifest (--manifest) only SSH is expected",
                    l.describe()
                ),
                Evidence::note("ss -Hltunp after first boot"),
            );
        }
    }
    for d in &o.declared_ports {
        let open = listeners
            .iter()
            .any(|l| !l.is_loopback() && format!("{}/{}", l.port, l.proto) == *d);
        if !open {
            out.warn(
                "declared-port-closed",
                format!("the manifest declares {d} but nothing listens on it after first boot"),
                Evidence::note("ss -Hltunp after first boot"),
            );
        }
    }
    for line in &g.listeners_unparsed {
        out.info(
            "unparsed-ss-line",
            format!("could not parse an `ss` line: {line}"),
            Evidence::note("ss -Hltunp"),
        );
    }
    if !allowed.is_empty() {
        out.proof(Evidence::note(format!(
            "listening beyond loopback: {}",
            allowed.join("; ")
        )));
    }
    out
}
