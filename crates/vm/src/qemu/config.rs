//! What a VM is made of: its MAC address, port forwards, configuration
//! and launch options.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::accel::Accel;

// ---------------------------------------------------------------- MacAddr

/// An Ethernet MAC address; displays as "fa:16:3e:12:ab:cd".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// OpenStack Neutron's prefix fa:16:3e plus three random bytes.
    pub fn random() -> MacAddr {
        let r: [u8; 3] = rand::random();
        MacAddr([0xfa, 0x16, 0x3e, r[0], r[1], r[2]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?} (expected six hex pairs like fa:16:3e:12:ab:cd)")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<MacAddr, MacParseError> {
        let err = || MacParseError(s.to_string());
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------- config

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A guest port reachable from the host on 127.0.0.1 (a free port is chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Forward {
    pub proto: Proto,
    pub guest_port: u16,
}

impl Forward {
    pub fn tcp(guest_port: u16) -> Forward {
        Forward {
            proto: Proto::Tcp,
            guest_port,
        }
    }
    pub fn udp(guest_port: u16) -> Forward {
        Forward {
            proto: Proto::Udp,
            guest_port,
        }
    }
}

/// A TCP address inside the guest's user network that leads to a port on
/// the host's loopback (`guestfwd`, one relay process per connection).
/// The only way out of a [restricted](VmConfig::restrict_network) network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestForward {
    /// In 10.0.2.0/24 but not 10.0.2.2 (the gateway) or 10.0.2.3 (DNS):
    /// QEMU refuses those.
    pub guest_addr: Ipv4Addr,
    pub guest_port: u16,
    /// On 127.0.0.1.
    pub host_port: u16,
}

impl GuestForward {
    /// The guest address [`GuestForward`]s use unless told otherwise.
    pub const DEFAULT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// For logs and process titles.
    pub name: String,
    /// qcow2 or raw; never modified. Its backing files must lie beside it
    /// and be declared with their format ([`approve_image`](super::approve_image)).
    pub image: PathBuf,
    /// Created if missing; holds overlay, logs, sockets and the capture.
    pub work_dir: PathBuf,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Bytes; the overlay gets this virtual size when larger than the image's.
    pub disk_size: Option<u64>,
    pub mac: MacAddr,
    /// virtio-net `host_mtu` when set.
    pub mtu: Option<u16>,
    /// Extra read-only raw drives after the root disk (seed images).
    pub drives: Vec<PathBuf>,
    /// Shared with the guest over virtiofs, tag "ibkit".
    pub share_dir: Option<PathBuf>,
    pub forwards: Vec<Forward>,
    /// User-mode networking only: the guest reaches nothing outside the VM
    /// (`restrict=on`: no host loopback through 10.0.2.2, no other address,
    /// no DNS) except [`guest_forwards`](Self::guest_forwards); `forwards`
    /// into the guest still work. On by default: a booted image is
    /// untrusted. Off, the guest reaches every service on the host's
    /// loopback and every address the host reaches.
    pub restrict_network: bool,
    pub guest_forwards: Vec<GuestForward>,
    /// QEMU machine type, default "pc".
    pub machine: Option<String>,
}

impl VmConfig {
    /// TCG, 1 vCPU, 1024 MiB, a random MAC, SSH (22/tcp) forwarded, a
    /// restricted network.
    pub fn new(
        name: impl Into<String>,
        image: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
    ) -> VmConfig {
        VmConfig {
            name: name.into(),
            image: image.into(),
            work_dir: work_dir.into(),
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 1024,
            disk_size: None,
            mac: MacAddr::random(),
            mtu: None,
            drives: Vec::new(),
            share_dir: None,
            forwards: vec![Forward::tcp(22)],
            restrict_network: true,
            guest_forwards: Vec::new(),
            machine: None,
        }
    }
}

/// How the VM's NIC reaches a network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum NetBackend {
    /// QEMU user-mode networking with [`VmConfig::forwards`] (the default).
    #[default]
    User,
    /// An existing tap device (created and bridged by the caller):
    /// `-netdev tap,ifname=...,script=no,downscript=no`. Forwards are not
    /// used: the guest is reached on its own address.
    Tap { ifname: String },
}

/// Launch options beyond [`VmConfig`] (kept apart so that `VmConfig`
/// literals elsewhere keep compiling). The default is what [`Vm::start`](super::Vm::start)
/// does: an attached child, user-mode networking, a packet capture and a
/// `cache=unsafe` throw-away overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchOptions {
    /// QEMU outlives this process: it is started with `-daemonize -pidfile
    /// WORK/qemu.pid`, without `PR_SET_PDEATHSIG`, is not registered for
    /// [`procs::kill_all`](crate::procs::kill_all), and dropping the [`Vm`](super::Vm) leaves it running
    /// ([`Vm::shutdown`](super::Vm::shutdown) and [`Vm::quit`](super::Vm::quit) still stop it). Find it again with
    /// [`Vm::attach`](super::Vm::attach) or [`detached_qemu_pid`](super::detached_qemu_pid). A virtiofs share is refused
    /// (virtiofsd would not outlive the process).
    pub detached: bool,
    pub net: NetBackend,
    /// Capture the NIC's traffic to `net.pcap` (`filter-dump`).
    pub capture: bool,
    /// `cache=` of the root disk: `unsafe` for throw-away overlays,
    /// `writeback` for disks that must survive a host crash.
    pub disk_cache: String,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            detached: false,
            net: NetBackend::User,
            capture: true,
            disk_cache: "unsafe".into(),
        }
    }
}

impl LaunchOptions {
    /// A long-lived VM: detached, on a tap device, no capture, `writeback`.
    pub fn detached_on_tap(ifname: impl Into<String>) -> LaunchOptions {
        LaunchOptions {
            detached: true,
            net: NetBackend::Tap {
                ifname: ifname.into(),
            },
            capture: false,
            disk_cache: "writeback".into(),
        }
    }
}

/// Whether the virtiofs share is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareState {
    NotRequested,
    Ready,
    /// The VM runs without the share; the reason says why.
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_display_random() {
        let m: MacAddr = "FA:16:3E:12:AB:CD".parse().expect("parse");
        assert_eq!(m, MacAddr([0xfa, 0x16, 0x3e, 0x12, 0xab, 0xcd]));
        assert_eq!(m.to_string(), "fa:16:3e:12:ab:cd");
        assert_eq!("fa-16-3e-12-ab-cd".parse::<MacAddr>(), Ok(m));
        for bad in [
            "",
            "fa:16:3e:12:ab",
            "fa:16:3e:12:ab:cd:ef",
            "fa:16:3e:12:ab:zz",
            "fa:16:3e:12:ab:c",
            "fa:16:3e:12:ab:+cd",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let r = MacAddr::random();
        assert_eq!(&r.0[..3], &[0xfa, 0x16, 0x3e]);
        assert_eq!(r.to_string().parse::<MacAddr>(), Ok(r));
        let distinct: std::collections::HashSet<MacAddr> =
            (0..50).map(|_| MacAddr::random()).collect();
        assert!(distinct.len() > 40);
        let j = serde_json::to_string(&m).expect("json");
        assert_eq!(j, "\"fa:16:3e:12:ab:cd\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).expect("back"), m);
    }
}
