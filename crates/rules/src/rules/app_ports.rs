//! APP-PORTS (static side): nothing listens that the app does not declare.

use std::collections::BTreeMap;

use crate::context::Context;
use crate::facts::systemd::load_unit_file;
use crate::manifest::{Port, Protocol};
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// Daemons that listen on the network as installed, by unit name.
/// `exposed = false`: the distribution's default config binds to localhost.
pub const KNOWN_LISTENERS: &[(&str, &[u16], Protocol, bool)] = &[
    ("apache2.service", &[80, 443], Protocol::Tcp, true),
    ("httpd.service", &[80, 443], Protocol::Tcp, true),
    ("nginx.service", &[80], Protocol::Tcp, true),
    ("lighttpd.service", &[80], Protocol::Tcp, true),
    ("rpcbind.service", &[111], Protocol::Tcp, true),
    ("rpcbind.socket", &[111], Protocol::Tcp, true),
    ("avahi-daemon.service", &[5353], Protocol::Udp, true),
    ("postfix.service", &[25], Protocol::Tcp, true),
    ("ntp.service", &[123], Protocol::Udp, true),
    ("ntpd.service", &[123], Protocol::Udp, true),
    ("named.service", &[53], Protocol::Tcp, true),
    ("bind9.service", &[53], Protocol::Tcp, true),
    ("dnsmasq.service", &[53], Protocol::Udp, true),
    ("vsftpd.service", &[21], Protocol::Tcp, true),
    ("proftpd.service", &[21], Protocol::Tcp, true),
    ("xinetd.service", &[23], Protocol::Tcp, true),
    ("inetd.service", &[23], Protocol::Tcp, true),
    ("telnet.socket", &[23], Protocol::Tcp, true),
    ("smbd.service", &[139, 445], Protocol::Tcp, true),
    ("smb.service", &[139, 445], Protocol::Tcp, true),
    ("nmbd.service", &[137], Protocol::Udp, true),
    ("nfs-server.service", &[2049], Protocol::Tcp, true),
    ("rsync.service", &[873], Protocol::Tcp, true),
    ("rsyncd.service", &[873], Protocol::Tcp, true),
    (
        "rabbitmq-server.service",
        &[5672, 25672, 4369],
        Protocol::Tcp,
        true,
    ),
    ("zabbix-agent.service", &[10050], Protocol::Tcp, true),
    ("zabbix-agent2.service", &[10050], Protocol::Tcp, true),
    (
        "prometheus-node-exporter.service",
        &[9100],
        Protocol::Tcp,
        true,
    ),
    ("node_exporter.service", &[9100], Protocol::Tcp, true),
    ("grafana-server.service", &[3000], Protocol::Tcp, true),
    ("webmin.service", &[10000], Protocol::Tcp, true),
    ("cockpit.socket", &[9090], Protocol::Tcp, true),
    ("docker.service", &[], Protocol::Tcp, false),
    ("postgresql.service", &[5432], Protocol::Tcp, false),
    ("mysql.service", &[3306], Protocol::Tcp, false),
    ("mysqld.service", &[3306], Protocol::Tcp, false),
    ("mariadb.service", &[3306], Protocol::Tcp, false),
    ("redis-server.service", &[6379], Protocol::Tcp, false),
    ("redis.service", &[6379], Protocol::Tcp, false),
    ("memcached.service", &[11211], Protocol::Tcp, false),
    ("mongod.service", &[27017], Protocol::Tcp, false),
    ("elasticsearch.service", &[9200], Protocol::Tcp, false),
    ("cups.service", &[631], Protocol::Tcp, false),
    ("exim4.service", &[25], Protocol::Tcp, false),
    ("snmpd.service", &[161], Protocol::Udp, false),
    ("chronyd.service", &[323], Protocol::Udp, false),
    ("chrony.service", &[323], Protocol::Udp, false),
];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_PORTS,
    title: "Only declared ports listen",
    requirement: "The application must keep every port that is not used closed.",
    severity: Severity::Error,
    doc: r#"## What it checks
Offline, the listeners that start at boot: every enabled `.socket` unit's
`ListenStream=`/`ListenDatagram=` ports (exact), and enabled services of
well-known network daemons (web servers, rpcbind, avahi, mail, DNS, FTP,
telnet, Samba, NFS, exporters, ...). Each must be SSH (22/tcp, or the `Port`
in `sshd_config`) or a port declared in the app manifest (`app.ports`).
Daemons whose default configuration binds to localhost only (PostgreSQL,
MySQL, Redis, memcached, CUPS, exim4, ...) are listed as information.

## Why
Every open port is attack surface on an internet-facing VM; unused daemons
(rpcbind, avahi, a leftover web server) are how images get compromised.

## Evidence
Offline: the socket unit and its `Listen*=` line, or the daemon's enabling
link. Live (boot-test): `ss -Hltun` compared with the declared ports, which
also catches what the app itself opens.

## Remediation
Disable or remove what the app does not need (`systemctl disable --now
rpcbind.socket rpcbind`), or declare the port in `ibkit.toml` if the app
uses it.

## Traps
Loopback-only listeners are not open ports. Socket activation opens the port
before any service runs.
"#,
    remediation: "Disable unneeded network services/sockets, or declare the app's ports in the manifest.",
    check,
};

/// Parse a `Listen*=` value into a port if it is a network address on a
/// non-loopback interface.
fn listen_port(value: &str) -> Option<u16> {
    let v = value.trim();
    if v.starts_with('/') || v.starts_with('@') || v.contains("vsock") {
        return None;
    }
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(|c| c == '[' || c == ']'), p),
        None => ("", v),
    };
    if host == "127.0.0.1" || host == "::1" || host.starts_with("127.") || host == "localhost" {
        return None;
    }
    port.parse().ok()
}

fn sshd_ports(cx: &Context) -> Vec<u16> {
    let mut ports = Vec::new();
    if let Some(text) = cx.read_text("/etc/ssh/sshd_config") {
        for l in text.lines() {
            let mut w = l.split_whitespace();
            if w.next().is_some_and(|k| k.eq_ignore_ascii_case("Port"))
                && let Some(p) = w.next().and_then(|p| p.parse().ok())
            {
                ports.push(p);
            }
        }
    }
    if ports.is_empty() {
        ports.push(22);
    }
    ports
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let units = cx.units();
    if units.no_systemd {
        return Outcome::unknown(
            "no systemd unit directories: listeners cannot be derived offline",
        );
    }
    let mut listeners: BTreeMap<Port, Evidence> = BTreeMap::new();
    let enabled: Vec<String> = units.enabled().map(str::to_owned).collect();
    for unit in &enabled {
        if unit.ends_with(".socket") {
            let Some(file) = units
                .file(unit)
                .cloned()
                .or_else(|| load_unit_file(cx, unit))
            else {
                continue;
            };
            for (key, proto) in [
                ("ListenStream", Protocol::Tcp),
                ("ListenDatagram", Protocol::Udp),
                ("ListenSequentialPacket", Protocol::Tcp),
            ] {
                for (v, line) in file.values("Socket", key) {
                    if let Some(number) = listen_port(&v) {
                        listeners
                            .entry(Port {
                                number,
                                protocol: proto,
                            })
                            .or_insert_with(|| {
                                Evidence::at_line(
                                    file.path.clone(),
                                    line,
                                    format!("{unit} listens: {key}={v}"),
                                )
                            });
                    }
                }
            }
        }
        if let Some((_, ports, proto, exposed)) = KNOWN_LISTENERS.iter().find(|(u, ..)| u == unit) {
            for &number in *ports {
                let ev = Evidence::note(format!(
                    "{unit} starts at boot: {}",
                    units.explain(unit).unwrap_or_default()
                ));
                if *exposed {
                    listeners
                        .entry(Port {
                            number,
                            protocol: *proto,
                        })
                        .or_insert(ev);
                } else {
                    o.info(
                        "localhost-listener",
                        format!(
                            "{unit} listens on {number}/{} (localhost by default)",
                            proto.as_str()
                        ),
                        ev,
                    );
                }
            }
        }
    }
    let ssh = sshd_ports(cx);
    let declared: Vec<Port> = cx.manifest.map(|m| m.ports.clone()).unwrap_or_default();
    let allowed =
        |p: &Port| (p.protocol == Protocol::Tcp && ssh.contains(&p.number)) || declared.contains(p);
    let mut extra = 0;
    for (port, ev) in &listeners {
        if allowed(port) {
            o.proof(Evidence {
                detail: format!("{port} allowed: {}", ev.detail),
                ..ev.clone()
            });
            continue;
        }
        extra += 1;
        if cx.manifest.is_some() {
            o.fail(
                "undeclared-port",
                format!("{port} listens but is not declared in the manifest"),
                ev.clone(),
            );
        } else {
            o.warn(
                "unexpected-port",
                format!("{port} listens at boot"),
                ev.clone(),
            );
        }
    }
    match cx.manifest {
        None => o.unverified("no app manifest: the app's own ports are unknown; declare them in ibkit.toml (app.ports)"),
        Some(m) => {
            if extra == 0 {
                let list: Vec<String> = m.ports.iter().map(ToString::to_string).collect();
                o.proof(Evidence::note(format!(
                    "listeners derived offline are SSH ({}) or declared ({})",
                    ssh.iter().map(|p| format!("{p}/tcp")).collect::<Vec<_>>().join(", "),
                    if list.is_empty() { "none".to_string() } else { list.join(", ") }
                )));
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::listen_port;

    #[test]
    fn listen_values() {
        assert_eq!(listen_port("22"), Some(22));
        assert_eq!(listen_port("0.0.0.0:8080"), Some(8080));
        assert_eq!(listen_port("[::]:443"), Some(443));
        assert_eq!(listen_port("127.0.0.1:631"), None);
        assert_eq!(listen_port("/run/foo.sock"), None);
    }
}
