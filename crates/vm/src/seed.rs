//! cloud-init seed images, written in Rust with `fatfs`: a vfat disk image
//! with a volume label (`cidata` for NoCloud, `config-2` for an OpenStack
//! config drive), directories and long file names.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::qemu::MacAddr;

/// Smallest image written (a FAT12 volume with room to spare).
const MIN_SIZE: u64 = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(
        "seed: volume label {label:?} must be 1 to 11 ASCII characters (no lower-case restriction, no '\"*/:<>?\\\\|')"
    )]
    BadLabel { label: String },
    #[error("seed: bad file path {path:?} (must be relative, '/'-separated, without '.' or '..')")]
    BadPath { path: String },
    #[error("seed: cannot create {}", out.display())]
    Create {
        out: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seed: cannot format a vfat volume in {}", out.display())]
    Format {
        out: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("seed: cannot write {path:?} into {}", out.display())]
    Write {
        out: PathBuf,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One file of a seed image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedFile {
    /// Path inside the volume, '/'-separated: "user-data" or "openstack/latest/meta_data.json".
    pub path: String,
    pub contents: Vec<u8>,
}

impl SeedFile {
    pub fn new(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> SeedFile {
        SeedFile {
            path: path.into(),
            contents: contents.into(),
        }
    }
}

fn label_bytes(label: &str) -> Result<[u8; 11], SeedError> {
    let bad = || SeedError::BadLabel {
        label: label.to_string(),
    };
    if label.is_empty()
        || label.len() > 11
        || !label
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"*/:<>?\\|+,;=[]".contains(&b) || b == b' ')
    {
        return Err(bad());
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

fn components(path: &str) -> Result<Vec<&str>, SeedError> {
    let parts: Vec<&str> = path.split('/').collect();
    if path.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\\'))
    {
        return Err(SeedError::BadPath {
            path: path.to_string(),
        });
    }
    Ok(parts)
}

fn image_size(files: &[SeedFile]) -> u64 {
    // Each file and directory costs at least a cluster (4 KiB at most here);
    // add 1 MiB for FATs, root directory and slack, round to whole MiB.
    let data: u64 = files
        .iter()
        .map(|f| (f.contents.len() as u64).div_ceil(4096) * 4096 + 2 * 4096)
        .sum();
    let total = (data + 1024 * 1024).div_ceil(1024 * 1024) * 1024 * 1024;
    total.max(MIN_SIZE)
}

/// Write a vfat disk image to `out` (replacing it) with volume label `label`
/// holding `files`, creating directories as needed. The size is chosen to
/// fit, at least 2 MiB.
pub fn write_vfat(label: &str, files: &[SeedFile], out: &Path) -> Result<(), SeedError> {
    let label11 = label_bytes(label)?;
    for f in files {
        components(&f.path)?;
    }
    let create = |source| SeedError::Create {
        out: out.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(create)?;
    // A seed holds pairing keys and SSH keys: owner only, also when the
    // file already existed with a wider mode.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(create)?;
    file.set_len(image_size(files)).map_err(create)?;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new().volume_label(label11),
    )
    .map_err(|source| SeedError::Format {
        out: out.to_path_buf(),
        source,
    })?;
    let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).map_err(|source| {
        SeedError::Format {
            out: out.to_path_buf(),
            source,
        }
    })?;
    for f in files {
        let werr = |source| SeedError::Write {
            out: out.to_path_buf(),
            path: f.path.clone(),
            source,
        };
        let parts = components(&f.path)?;
        let (name, dirs) = parts.split_last().ok_or_else(|| SeedError::BadPath {
            path: f.path.clone(),
        })?;
        let mut dir = fs.root_dir();
        for d in dirs {
            dir = match dir.open_dir(d) {
                Ok(existing) => existing,
                Err(_) => dir.create_dir(d).map_err(werr)?,
            };
        }
        let mut fh = dir.create_file(name).map_err(werr)?;
        fh.truncate().map_err(werr)?;
        fh.write_all(&f.contents).map_err(werr)?;
        fh.flush().map_err(werr)?;
    }
    fs.unmount().map_err(|source| SeedError::Write {
        out: out.to_path_buf(),
        path: "(unmount)".into(),
        source,
    })?;
    file.sync_all().map_err(create)?;
    Ok(())
}

/// NoCloud seed files (volume label `cidata`): `meta-data` with instance-id
/// and local-hostname, `user-data` as given, `network-config` if given.
pub fn nocloud_files(
    instance_id: &str,
    hostname: &str,
    user_data: &str,
    network_config: Option<&str>,
) -> Vec<SeedFile> {
    // JSON strings are valid YAML scalars, so quoting needs no YAML library.
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut files = vec![
        SeedFile::new(
            "meta-data",
            format!(
                "instance-id: {}\nlocal-hostname: {}\n",
                q(instance_id),
                q(hostname)
            ),
        ),
        SeedFile::new("user-data", user_data),
    ];
    if let Some(nc) = network_config {
        files.push(SeedFile::new("network-config", nc));
    }
    files
}

/// OpenStack config-drive files (write them with label `config-2`), following
/// the layout Nova writes: `openstack/<version>/{meta_data.json, user_data,
/// network_data.json}` for version `latest` and `2012-08-10`.
///
/// `meta_data.json` has uuid, name, hostname, public_keys {"default": key}
/// (and the newer `keys` list), launch_index 0, availability_zone "nova";
/// `network_data.json` asks for DHCP (IPv4) on the one NIC with `mac`.
pub fn config_drive_files(
    uuid: &str,
    hostname: &str,
    public_key: &str,
    user_data: &str,
    mac: &MacAddr,
) -> Vec<SeedFile> {
    let meta = json!({
        "uuid": uuid,
        "name": hostname,
        "hostname": hostname,
        "public_keys": { "default": public_key },
        "keys": [{ "name": "default", "type": "ssh", "data": public_key }],
        "launch_index": 0,
        "availability_zone": "nova",
        "meta": {},
        "files": [],
        "project_id": "ibkit",
        "devices": [],
    });
    let network = json!({
        "links": [{
            "id": "tap-ibkit0",
            "vif_id": uuid,
            "type": "ovs",
            "ethernet_mac_address": mac.to_string(),
        }],
        "networks": [{
            "id": "network0",
            "type": "ipv4_dhcp",
            "link": "tap-ibkit0",
            "network_id": uuid,
        }],
        "services": [],
    });
    let meta_s = serde_json::to_string_pretty(&meta).unwrap_or_default();
    let net_s = serde_json::to_string_pretty(&network).unwrap_or_default();
    let mut files = Vec::new();
    for version in ["latest", "2012-08-10"] {
        files.push(SeedFile::new(
            format!("openstack/{version}/meta_data.json"),
            meta_s.clone(),
        ));
        files.push(SeedFile::new(
            format!("openstack/{version}/user_data"),
            user_data,
        ));
        files.push(SeedFile::new(
            format!("openstack/{version}/network_data.json"),
            net_s.clone(),
        ));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_back(img: &Path) -> (String, Vec<(String, Vec<u8>)>) {
        let f = std::fs::File::open(img).expect("open image");
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).expect("mount image");
        let label = fs.volume_label();
        let mut out = Vec::new();
        fn walk<T: fatfs::ReadWriteSeek>(
            dir: fatfs::Dir<'_, T>,
            prefix: &str,
            out: &mut Vec<(String, Vec<u8>)>,
        ) {
            for e in dir.iter() {
                let e = e.expect("dir entry");
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                if e.is_dir() {
                    walk(e.to_dir(), &path, out);
                } else {
                    let mut buf = Vec::new();
                    e.to_file().read_to_end(&mut buf).expect("read file");
                    out.push((path, buf));
                }
            }
        }
        walk(fs.root_dir(), "", &mut out);
        out.sort();
        (label, out)
    }

    fn blkid(img: &Path) -> Option<String> {
        let out = std::process::Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(img)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn nocloud_seed_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("seed.img");
        let files = nocloud_files(
            "iid-ibkit-1",
            "web-1",
            "#cloud-config\nusers: []\n",
            Some("version: 2\nethernets: {}\n"),
        );
        write_vfat("cidata", &files, &img).expect("write seed");
        assert_eq!(std::fs::metadata(&img).expect("meta").len(), MIN_SIZE);
        let (label, got) = read_back(&img);
        assert_eq!(label.trim_end(), "cidata");
        let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        assert_eq!(
            String::from_utf8_lossy(&got[0].1),
            "instance-id: \"iid-ibkit-1\"\nlocal-hostname: \"web-1\"\n"
        );
        assert_eq!(got[2].1, b"#cloud-config\nusers: []\n");
        match blkid(&img) {
            Some(out) if !out.is_empty() => {
                assert!(out.lines().any(|l| l == "LABEL=cidata"), "{out}");
                assert!(out.lines().any(|l| l == "TYPE=vfat"), "{out}");
            }
            _ => eprintln!("blkid not available; skipped that check"),
        }
    }

    #[test]
    fn config_drive_round_trip_and_big_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("config-drive.img");
        let mac: MacAddr = "fa:16:3e:01:02:03".parse().expect("mac");
        let big = "#!/bin/sh\n".to_string() + &"echo ibkit\n".repeat(400_000);
        let files = config_drive_files(
            "0b5f4a8e-1111-2222-3333-444455556666",
            "app-1",
            "ssh-ed25519 AAAAC3 ibkit",
            &big,
            &mac,
        );
        write_vfat("config-2", &files, &img).expect("write config drive");
        assert!(std::fs::metadata(&img).expect("meta").len() > big.len() as u64 * 2);
        let (label, got) = read_back(&img);
        assert_eq!(label.trim_end(), "config-2");
        let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "openstack/2012-08-10/meta_data.json",
                "openstack/2012-08-10/network_data.json",
                "openstack/2012-08-10/user_data",
                "openstack/latest/meta_data.json",
                "openstack/latest/network_data.json",
                "openstack/latest/user_data",
            ]
        );
        let meta: serde_json::Value = serde_json::from_slice(&got[3].1).expect("meta json");
        assert_eq!(meta["uuid"], "0b5f4a8e-1111-2222-3333-444455556666");
        assert_eq!(meta["public_keys"]["default"], "ssh-ed25519 AAAAC3 ibkit");
        assert_eq!(meta["launch_index"], 0);
        assert_eq!(meta["availability_zone"], "nova");
        let net: serde_json::Value = serde_json::from_slice(&got[4].1).expect("net json");
        assert_eq!(net["links"][0]["ethernet_mac_address"], "fa:16:3e:01:02:03");
        assert_eq!(net["networks"][0]["type"], "ipv4_dhcp");
        assert_eq!(got[5].1, big.as_bytes());
        if let Some(out) = blkid(&img).filter(|o| !o.is_empty()) {
            assert!(out.lines().any(|l| l == "LABEL=config-2"), "{out}");
        }
    }

    #[test]
    fn bad_labels_and_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("x.img");
        assert!(matches!(
            write_vfat("much-too-long-label", &[], &img),
            Err(SeedError::BadLabel { .. })
        ));
        let bad = [SeedFile::new("../etc/passwd", "x")];
        assert!(matches!(
            write_vfat("cidata", &bad, &img),
            Err(SeedError::BadPath { .. })
        ));
        let err = write_vfat("cidata", &[], Path::new("/nonexistent-dir/seed.img"))
            .expect_err("unwritable");
        assert!(
            err.to_string().contains("/nonexistent-dir/seed.img"),
            "{err}"
        );
    }
}
