//! QEMU's command line.

use std::path::Path;

use super::config::{Forward, LaunchOptions, NetBackend, VmConfig};
use crate::accel::Accel;
use crate::binary::qemu_binary;

/// Escape a value for QEMU's option syntax (',' is doubled).
fn q(s: impl AsRef<str>) -> String {
    s.as_ref().replace(',', ",,")
}

fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_argv(
    c: &VmConfig,
    opts: &LaunchOptions,
    ports: &[(Forward, u16)],
    disks: &[String],
    serial: &Path,
    qmp: &Path,
    pcap: &Path,
    vfs_sock: &Path,
    pidfile: &Path,
    share: bool,
    relay: Option<&Path>,
) -> Vec<String> {
    let mut a: Vec<String> = vec![qemu_binary().display().to_string()];
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let title: String = c
        .name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    push(&["-name", &format!("{},process=ibkit-{title}", q(&c.name))]);
    push(&["-nodefaults", "-no-user-config"]);
    let machine = c.machine.clone().unwrap_or_else(|| "pc".into());
    push(&["-machine", &q(&machine)]);
    // `-accel` rather than `-machine accel=`: the two cannot be combined, and
    // thread=multi (MTTCG) is only reachable through `-accel`.
    let accel = match c.accel {
        Accel::Tcg if c.vcpus > 1 => "tcg,thread=multi".to_string(),
        other => other.as_str().to_string(),
    };
    push(&["-accel", &accel]);
    push(&[
        "-smp",
        &c.vcpus.to_string(),
        "-m",
        &format!("{}M", c.memory_mib),
    ]);
    push(&["-display", "none", "-vga", "none"]);
    push(&[
        "-chardev",
        &format!("file,id=ser0,path={}", qp(serial)),
        "-serial",
        "chardev:ser0",
    ]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", qp(qmp))]);
    let mut netdev = match &opts.net {
        NetBackend::User => user_netdev(c, relay),
        NetBackend::Tap { ifname } => {
            format!("tap,id=n0,ifname={},script=no,downscript=no", q(ifname))
        }
    };
    for (f, host) in ports {
        netdev.push_str(&format!(
            ",hostfwd={}:127.0.0.1:{host}-:{}",
            f.proto, f.guest_port
        ));
    }
    push(&["-netdev", &netdev]);
    let mut nic = format!("virtio-net-pci,netdev=n0,mac={}", c.mac);
    if let Some(mtu) = c.mtu {
        nic.push_str(&format!(",host_mtu={mtu}"));
    }
    push(&["-device", &nic]);
    if opts.capture {
        push(&[
            "-object",
            &format!("filter-dump,id=dump0,netdev=n0,file={}", qp(pcap)),
        ]);
    }
    if share {
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                c.memory_mib
            ),
            "-numa",
            "node,memdev=mem",
            "-chardev",
            &format!("socket,id=vfs,path={}", qp(vfs_sock)),
            "-device",
            "vhost-user-fs-pci,chardev=vfs,tag=ibkit",
        ]);
    }
    push(&["-device", "virtio-rng-pci"]);
    // Disks last: their PCI slots follow the NIC's and the RNG's.
    push(&disks.iter().map(String::as_str).collect::<Vec<_>>());
    if opts.detached {
        push(&["-daemonize", "-pidfile", &pidfile.display().to_string()]);
    }
    a
}

/// `-netdev user`: restricted unless the config opens it, with a
/// `guestfwd` per guest forward that runs `relay` (socat) per connection.
fn user_netdev(c: &VmConfig, relay: Option<&Path>) -> String {
    let mut n = "user,id=n0".to_string();
    if c.restrict_network {
        n.push_str(",restrict=on");
    }
    if let Some(relay) = relay {
        for g in &c.guest_forwards {
            n.push_str(&format!(
                ",guestfwd=tcp:{}:{}-cmd:{} STDIO TCP:127.0.0.1:{}",
                g.guest_addr,
                g.guest_port,
                qp(relay),
                g.host_port
            ));
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::config::GuestForward;
    use super::super::disk::cache_mode;
    use super::*;
    use serde_json::json;
    use std::path::Path;

    /// The command line as one string, with the fixed paths of a VM in /w.
    fn argv_line(
        c: &VmConfig,
        opts: &LaunchOptions,
        ports: &[(Forward, u16)],
        share: bool,
        relay: Option<&Path>,
    ) -> String {
        build_argv(
            c,
            opts,
            ports,
            &[],
            Path::new("/w/serial.log"),
            Path::new("/w/qmp.sock"),
            Path::new("/w/net.pcap"),
            Path::new("/w/virtiofsd.sock"),
            Path::new("/w/qemu.pid"),
            share,
            relay,
        )
        .join(" ")
    }

    #[test]
    fn argv_shape() {
        let mut c = VmConfig::new("t,1", "/img.qcow2", "/w");
        c.vcpus = 2;
        c.mtu = Some(1400);
        c.mac = "fa:16:3e:00:00:01".parse().expect("mac");
        c.forwards = vec![Forward::tcp(22), Forward::udp(53)];
        let ports = vec![(Forward::tcp(22), 40022), (Forward::udp(53), 40053)];
        let s = argv_line(&c, &LaunchOptions::default(), &ports, true, None);
        assert!(s.contains("-name t,,1,process=ibkit-t_1"), "{s}");
        assert!(s.contains("-accel tcg,thread=multi"), "{s}");
        assert!(
            s.contains("hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=udp:127.0.0.1:40053-:53"),
            "{s}"
        );
        assert!(s.contains("mac=fa:16:3e:00:00:01,host_mtu=1400"), "{s}");
        assert!(
            s.contains("memory-backend-memfd,id=mem,size=1024M,share=on"),
            "{s}"
        );
        assert!(s.contains("vhost-user-fs-pci,chardev=vfs,tag=ibkit"), "{s}");
        assert!(!s.contains("-cpu"), "never -cpu host/max here: {s}");
        assert!(s.contains("-netdev user,id=n0,restrict=on,hostfwd="), "{s}");
    }

    #[test]
    fn guest_forwards_run_the_relay_and_an_open_network_is_asked_for() {
        let mut c = VmConfig::new("g", "/img.qcow2", "/w");
        c.guest_forwards = vec![GuestForward {
            guest_addr: GuestForward::DEFAULT_ADDR,
            guest_port: 443,
            host_port: 40443,
        }];
        let argv = |c: &VmConfig, relay: Option<&Path>| {
            argv_line(c, &LaunchOptions::default(), &[], false, relay)
        };
        let s = argv(&c, Some(Path::new("/usr/bin/socat")));
        assert!(
            s.contains(
                "-netdev user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:443-cmd:/usr/bin/socat STDIO TCP:127.0.0.1:40443 "
            ),
            "{s}"
        );
        c.restrict_network = false;
        let s = argv(&c, None);
        assert!(s.contains("-netdev user,id=n0 "), "{s}");
    }

    #[test]
    fn argv_detached_on_tap() {
        let c = VmConfig::new("d", "/img.qcow2", "/w");
        let s = argv_line(
            &c,
            &LaunchOptions::detached_on_tap("ibkt0"),
            &[],
            false,
            None,
        );
        assert!(
            s.contains("-netdev tap,id=n0,ifname=ibkt0,script=no,downscript=no "),
            "{s}"
        );
        assert!(s.ends_with("-daemonize -pidfile /w/qemu.pid"), "{s}");
        // The disks' cache is in their -blockdev nodes (disk_args): a
        // long-lived VM's root disk flushes.
        assert_eq!(
            cache_mode(&LaunchOptions::detached_on_tap("ibkt0").disk_cache),
            Some((json!({"direct": false, "no-flush": false}), true))
        );
        assert_eq!(
            cache_mode(&LaunchOptions::default().disk_cache),
            Some((json!({"direct": false, "no-flush": true}), true))
        );
        assert!(!s.contains("filter-dump"), "{s}");
        assert!(!s.contains("hostfwd"), "{s}");
    }
}
