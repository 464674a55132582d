//! [`OpenStackBackend`]: the VMs of an instance as Nova servers.
//!
//! - **Image:** `hosts[].image` names a file → uploaded once to Glance as a
//!   private image carrying its SHA-256 (`ibkit-sha256`) and reused by
//!   every later deployment of the same bytes from this project; otherwise
//!   a Glance image id or name (exactly one active image may carry it).
//! - **Flavor:** the smallest enabled Nova flavor with at least the
//!   manifest's vCPUs, memory and disk.
//! - **Network:** the network given (`--os-network`), or one per instance:
//!   network + subnet + router uplinked to the external network (the one
//!   given, or the only one), all tagged. One port per VM, tagged, deleted
//!   with its server (Nova only detaches ports it did not create).
//! - **Server:** `ibkit-<instance>-<host>-a<attempt>`, config drive, user
//!   data base64 (checked against Nova's 65535-byte limit before asking),
//!   metadata `ibkit-instance`, `ibkit-deployment`, `ibkit-host`,
//!   `ibkit-attempt`, `ibkit-config-hash`, which `list` reads back. A server
//!   that goes to ERROR is deleted and its fault becomes the error (`No valid
//!   host` and quota refusals are [`BackendError::Capacity`]).
//! - **Evidence:** the console log and the server document (without user
//!   data) saved under `<evidence dir>/<server name>-<unix ms>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ibkit_support::clock::{parse_utc, unix_ms, unix_secs};
use ibkit_support::text::tail_bytes;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::api::{
    ApiError, CloudApi, Flavor, FloatingIp, Image, Network, Port, Router, SecurityGroup, Server,
    Service, Tagged,
};
use crate::backend::{
    BackendError, ComputeBackend, Evidence, InstanceRef, VmHandle, VmInfo, VmRequest, VmState,
};
use crate::userdata::{OPENSTACK_USER_DATA_MAX_BASE64, fits_openstack};

/// On every Neutron resource and Glance image ibkit creates.
pub const TAG: &str = "ibkit";
/// Server metadata keys (and the prefix of Neutron tags).
pub const META_INSTANCE: &str = "ibkit-instance";
pub const META_DEPLOYMENT: &str = "ibkit-deployment";
pub const META_HOST: &str = "ibkit-host";
pub const META_ATTEMPT: &str = "ibkit-attempt";
pub const META_CONFIG_HASH: &str = "ibkit-config-hash";
/// The Glance property holding an uploaded file's SHA-256.
pub const IMAGE_SHA256_PROPERTY: &str = "ibkit-sha256";

/// The Neutron tag naming the instance a resource belongs to.
pub fn instance_tag(id: &uuid::Uuid) -> String {
    format!("{META_INSTANCE}:{id}")
}

/// A server's name.
pub fn server_name(instance: &str, host: &str, attempt: u32) -> String {
    format!("ibkit-{instance}-{host}-a{attempt}")
}

/// Where the backend puts VMs and how long it waits.
#[derive(Debug, Clone)]
pub struct OpenStackSettings {
    /// An existing network (name or id) for every port; `None`: a network,
    /// subnet and router per instance.
    pub network: Option<String>,
    /// The external network for the per-instance router (name or id);
    /// `None`: the only external network, or no router when there is none.
    pub external_network: Option<String>,
    /// The per-instance subnet.
    pub subnet_cidr: String,
    pub dns_nameservers: Vec<String>,
    /// Console logs of deleted VMs.
    pub evidence_dir: PathBuf,
    /// BUILD → ACTIVE.
    pub active_timeout: Duration,
    /// A server's deletion.
    pub delete_timeout: Duration,
    /// An uploaded image becoming active in Glance.
    pub upload_timeout: Duration,
    /// A floating IP per server (on the external network).
    pub floating_ips: bool,
    /// Keep uploaded images on `down` (else deleted once no deployment
    /// uses them).
    pub keep_images: bool,
    pub poll: Duration,
}

impl OpenStackSettings {
    pub fn new(evidence_dir: PathBuf) -> Self {
        OpenStackSettings {
            network: None,
            external_network: None,
            subnet_cidr: "192.168.77.0/24".into(),
            dns_nameservers: Vec::new(),
            evidence_dir,
            active_timeout: Duration::from_secs(15 * 60),
            delete_timeout: Duration::from_secs(5 * 60),
            upload_timeout: Duration::from_secs(30 * 60),
            floating_ips: false,
            keep_images: false,
            poll: Duration::from_secs(2),
        }
    }
}

pub struct OpenStackBackend {
    api: CloudApi,
    settings: OpenStackSettings,
    flavors: tokio::sync::Mutex<Option<Vec<Flavor>>>,
    /// `hosts[].image` → Glance id, and whether ibkit uploaded it.
    images: tokio::sync::Mutex<BTreeMap<String, (String, bool)>>,
    /// Instance → network id; the lock also serialises network creation.
    networks: tokio::sync::Mutex<BTreeMap<uuid::Uuid, String>>,
}

/// What [`OpenStackBackend::sweep`] found (and deleted unless a dry run).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    pub servers: Vec<String>,
    pub floating_ips: Vec<String>,
    pub ports: Vec<String>,
    pub security_groups: Vec<String>,
    pub routers: Vec<String>,
    pub networks: Vec<String>,
    /// Uploads no live deployment uses, and uploads that never finished.
    pub images: Vec<String>,
    /// Tagged resources kept because their deployment still exists or they
    /// are younger than the threshold.
    pub kept: usize,
}

impl SweepReport {
    pub fn total(&self) -> usize {
        self.servers.len()
            + self.floating_ips.len()
            + self.ports.len()
            + self.security_groups.len()
            + self.routers.len()
            + self.networks.len()
            + self.images.len()
    }
}

/// Maps an API failure onto the backend's error kinds.
pub fn backend_error(e: ApiError) -> BackendError {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    match &e {
        _ if lower.contains("quota") || lower.contains("no valid host") => {
            BackendError::Capacity(msg)
        }
        ApiError::Transport { .. } | ApiError::Auth { .. } | ApiError::NoEndpoint { .. } => {
            BackendError::Unavailable(msg)
        }
        ApiError::Http { status, .. } if *status >= 500 => BackendError::Unavailable(msg),
        _ => BackendError::Other(msg),
    }
}

/// Percent-encodes a query value.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escapes a literal for Nova's regular-expression name filter.
fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn vm_state_of(server: &Server) -> VmState {
    if server.task_state.as_deref() == Some("deleting") {
        return VmState::Stopped;
    }
    match server.status.as_str() {
        // On its way up (or being changed): not a dead VM.
        "ACTIVE" | "BUILD" | "REBUILD" | "REBOOT" | "HARD_REBOOT" | "MIGRATING" | "RESIZE"
        | "VERIFY_RESIZE" | "REVERT_RESIZE" | "PASSWORD" => VmState::Running,
        "DELETED" | "SOFT_DELETED" => VmState::Missing,
        // ERROR, SHUTOFF, PAUSED, SUSPENDED, SHELVED*, RESCUE, UNKNOWN…
        _ => VmState::Stopped,
    }
}

fn addresses_of(server: &Server) -> Vec<std::net::IpAddr> {
    server
        .addresses
        .values()
        .flatten()
        .filter_map(|a| a.addr.parse().ok())
        .collect()
}

/// The disk format Glance must be told; a qcow2 with a backing file is
/// refused (it would name a file on the uploader's machine).
fn disk_format(file: &Path) -> Result<&'static str, BackendError> {
    use std::io::Read as _;
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(file)?;
    let n = f.read(&mut head)?;
    let bad = |why: &str| BackendError::Image {
        image: file.display().to_string(),
        why: why.into(),
    };
    if n >= 16 && head.starts_with(b"QFI\xfb") {
        let backing = u64::from_be_bytes(head[8..16].try_into().map_err(|_| bad("short"))?);
        if backing != 0 {
            return Err(bad(
                "is a qcow2 overlay with a backing file; upload a standalone image (qemu-img convert -O qcow2)",
            ));
        }
        return Ok("qcow2");
    }
    if n >= 4 && head.starts_with(b"KDMV") {
        return Ok("vmdk");
    }
    if n == 0 {
        return Err(bad("is empty"));
    }
    Ok("raw")
}

fn sha256_file(file: &Path) -> Result<String, std::io::Error> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(file)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(ibkit_api::step::hex(&h.finalize()))
}

impl OpenStackBackend {
    pub fn new(api: CloudApi, settings: OpenStackSettings) -> Self {
        OpenStackBackend {
            api,
            settings,
            flavors: tokio::sync::Mutex::new(None),
            images: tokio::sync::Mutex::new(BTreeMap::new()),
            networks: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    pub fn api(&self) -> &CloudApi {
        &self.api
    }

    async fn server(&self, id: &str) -> Result<Option<Server>, BackendError> {
        match self
            .api
            .get_as::<Server>(Service::Compute, &format!("/servers/{}", q(id)), "server")
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(backend_error(e)),
        }
    }

    /// The smallest enabled flavor with at least what is asked.
    async fn flavor_id(
        &self,
        want: &crate::manifest::Flavor,
        named: Option<&str>,
    ) -> Result<String, BackendError> {
        let mut cache = self.flavors.lock().await;
        if cache.is_none() {
            let all: Vec<Flavor> = self
                .api
                .list_all(Service::Compute, "/flavors/detail", "flavors")
                .await
                .map_err(backend_error)?;
            *cache = Some(all);
        }
        let all = cache.as_deref().unwrap_or_default();
        if let Some(named) = named {
            return all
                .iter()
                .find(|f| f.id == named)
                .or_else(|| all.iter().find(|f| f.name == named))
                .map(|f| f.id.clone())
                .ok_or_else(|| {
                    BackendError::Other(format!(
                        "flavor {named:?}: no such Nova flavor; the cloud offers {}",
                        all.iter()
                            .filter(|f| !f.disabled)
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                });
        }
        let fits = |f: &&Flavor| {
            !f.disabled
                && f.vcpus >= want.vcpus
                && f.ram >= u64::from(want.memory_mib)
                && f.disk >= u64::from(want.disk_gib)
        };
        all.iter()
            .filter(fits)
            .min_by_key(|f| (f.vcpus, f.ram, f.disk, f.name.clone()))
            .map(|f| f.id.clone())
            .ok_or_else(|| {
                let offered: Vec<String> = all
                    .iter()
                    .filter(|f| !f.disabled)
                    .map(|f| format!("{} ({}/{}/{})", f.name, f.vcpus, f.ram, f.disk))
                    .collect();
                BackendError::Capacity(format!(
                    "no flavor has at least {} vCPUs, {} MiB and {} GiB of disk; the cloud offers {}",
                    want.vcpus,
                    want.memory_mib,
                    want.disk_gib,
                    if offered.is_empty() {
                        "none".to_string()
                    } else {
                        offered.join(", ")
                    }
                ))
            })
    }

    /// The Glance id of `hosts[].image`; an image ibkit uploaded is tagged
    /// with every instance using it (`down` deletes it after the last).
    async fn image_id(&self, image: &str, instance: &InstanceRef) -> Result<String, BackendError> {
        let mut cache = self.images.lock().await;
        let (id, uploaded) = match cache.get(image) {
            Some(known) => known.clone(),
            None => {
                let path = Path::new(image);
                let known = if path.is_file() {
                    (self.upload_image(path, instance).await?, true)
                } else {
                    (self.find_image(image).await?, false)
                };
                cache.insert(image.to_string(), known.clone());
                known
            }
        };
        if uploaded {
            self.api
                .call(
                    Service::Image,
                    Method::PUT,
                    &format!("/images/{id}/tags/{}", q(&instance_tag(&instance.id))),
                    None,
                )
                .await
                .map_err(backend_error)?;
        }
        Ok(id)
    }

    async fn find_image(&self, image: &str) -> Result<String, BackendError> {
        let bad = |why: String| BackendError::Image {
            image: image.to_string(),
            why,
        };
        if uuid::Uuid::parse_str(image).is_ok() {
            match self
                .api
                .get_as::<Image>(Service::Image, &format!("/images/{image}"), "")
                .await
            {
                Ok(i) if i.status == "active" => return Ok(i.id),
                Ok(i) => return Err(bad(format!("is {}, not active", i.status))),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(backend_error(e)),
            }
        }
        let found: Vec<Image> = self
            .api
            .get_as(
                Service::Image,
                &format!("/images?name={}", q(image)),
                "images",
            )
            .await
            .map_err(backend_error)?;
        let active: Vec<&Image> = found.iter().filter(|i| i.status == "active").collect();
        match active.as_slice() {
            [one] => Ok(one.id.clone()),
            [] if found.is_empty() => Err(bad(
                "is neither a file nor a Glance image this project can see (name or id)".into(),
            )),
            [] => Err(bad(format!(
                "the Glance image is {}, not active",
                found[0].status
            ))),
            many => Err(bad(format!(
                "{} active Glance images have this name; name one by id ({})",
                many.len(),
                many.iter()
                    .map(|i| i.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Uploads a file once per content: a private image of this project
    /// with the same SHA-256 is reused.
    async fn upload_image(
        &self,
        file: &Path,
        instance: &InstanceRef,
    ) -> Result<String, BackendError> {
        let owned = file.to_path_buf();
        let (format, sha) = tokio::task::spawn_blocking(move || {
            let format = disk_format(&owned)?;
            Ok::<_, BackendError>((format, sha256_file(&owned)?))
        })
        .await
        .map_err(|e| BackendError::Other(format!("hashing {}: {e}", file.display())))??;
        let project = self.api.project_id().await.map_err(backend_error)?;
        let existing: Vec<Image> = self
            .api
            .get_as(
                Service::Image,
                &format!(
                    "/images?owner={}&status=active&{IMAGE_SHA256_PROPERTY}={}",
                    q(&project),
                    q(&sha)
                ),
                "images",
            )
            .await
            .map_err(backend_error)?;
        if let Some(i) = existing.first() {
            tracing::info!(image = %i.id, file = %file.display(), "reusing the uploaded image");
            return Ok(i.id.clone());
        }
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let body = json!({
            "name": format!("ibkit-{stem}-{}", &sha[..12]),
            "disk_format": format,
            "container_format": "bare",
            "visibility": "private",
            "tags": [TAG, instance_tag(&instance.id)],
            IMAGE_SHA256_PROPERTY: sha,
        });
        let created: Image = self
            .api
            .post_as(Service::Image, "/images", &body, "")
            .await
            .map_err(backend_error)?;
        tracing::info!(image = %created.id, file = %file.display(), "uploading");
        let uploaded = async {
            self.api
                .upload_image_file(&created.id, file)
                .await
                .map_err(backend_error)?;
            let started = Instant::now();
            loop {
                let i: Image = self
                    .api
                    .get_as(Service::Image, &format!("/images/{}", created.id), "")
                    .await
                    .map_err(backend_error)?;
                match i.status.as_str() {
                    "active" => return Ok(()),
                    "killed" | "deleted" | "pending_delete" => {
                        return Err(BackendError::Image {
                            image: file.display().to_string(),
                            why: format!("Glance marked the upload {}", i.status),
                        });
                    }
                    _ if started.elapsed() > self.settings.upload_timeout => {
                        return Err(BackendError::Unavailable(format!(
                            "image {} still {} after {} s",
                            i.id,
                            i.status,
                            started.elapsed().as_secs()
                        )));
                    }
                    _ => tokio::time::sleep(self.settings.poll).await,
                }
            }
        }
        .await;
        if let Err(e) = uploaded {
            // A half-uploaded image would be found again by nobody.
            let _ = self
                .api
                .delete(Service::Image, &format!("/images/{}", created.id))
                .await;
            return Err(e);
        }
        Ok(created.id)
    }

    async fn resolve_network(&self, name_or_id: &str) -> Result<Network, BackendError> {
        if uuid::Uuid::parse_str(name_or_id).is_ok() {
            match self
                .api
                .get_as::<Network>(
                    Service::Network,
                    &format!("/networks/{name_or_id}"),
                    "network",
                )
                .await
            {
                Ok(n) => return Ok(n),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(backend_error(e)),
            }
        }
        let found: Vec<Network> = self
            .api
            .get_as(
                Service::Network,
                &format!("/networks?name={}", q(name_or_id)),
                "networks",
            )
            .await
            .map_err(backend_error)?;
        match found.len() {
            1 => Ok(found
                .into_iter()
                .next()
                .ok_or_else(|| BackendError::Other(format!("network {name_or_id}: vanished")))?),
            0 => Err(BackendError::Other(format!(
                "network {name_or_id:?}: no such Neutron network"
            ))),
            n => Err(BackendError::Other(format!(
                "network {name_or_id:?}: {n} networks have this name; give its id"
            ))),
        }
    }

    async fn tag(&self, kind: &str, id: &str, tags: &[String]) -> Result<(), BackendError> {
        self.api
            .call(
                Service::Network,
                Method::PUT,
                &format!("/{kind}/{id}/tags"),
                Some(&json!({ "tags": tags })),
            )
            .await
            .map(|_| ())
            .map_err(backend_error)
    }

    fn tags_for(instance: &InstanceRef) -> Vec<String> {
        vec![TAG.to_string(), instance_tag(&instance.id)]
    }

    /// The network the instance's ports go on; created (with subnet and
    /// router) on first use.
    async fn network_for(&self, instance: &InstanceRef) -> Result<String, BackendError> {
        let mut cache = self.networks.lock().await;
        if let Some(id) = cache.get(&instance.id) {
            return Ok(id.clone());
        }
        let id = match &self.settings.network {
            Some(n) => self.resolve_network(n).await?.id,
            None => match self.create_network(instance).await {
                Ok(id) => id,
                Err(e) => {
                    // Leave nothing half-built behind.
                    if let Err(cleanup) = self.release_network(instance).await {
                        tracing::warn!(error = %cleanup, "cleaning up a failed network");
                    }
                    return Err(e);
                }
            },
        };
        cache.insert(instance.id, id.clone());
        Ok(id)
    }

    async fn create_network(&self, instance: &InstanceRef) -> Result<String, BackendError> {
        let tags = Self::tags_for(instance);
        let existing: Vec<Network> = self.list_tagged(&q(&instance_tag(&instance.id))).await?;
        if let Some(n) = existing.iter().find(|n| !n.subnets.is_empty()) {
            return Ok(n.id.clone());
        }
        let name = format!("ibkit-{}", instance.name);
        let net: Network = self
            .api
            .post_as(
                Service::Network,
                "/networks",
                &json!({ "network": { "name": name,
                    "description": format!("ibkit deployment {} (instance {})", instance.name, instance.id) } }),
                "network",
            )
            .await
            .map_err(backend_error)?;
        self.tag("networks", &net.id, &tags).await?;
        let subnet: super::api::Subnet = self
            .api
            .post_as(
                Service::Network,
                "/subnets",
                &json!({ "subnet": { "name": name, "network_id": net.id, "ip_version": 4,
                    "cidr": self.settings.subnet_cidr, "enable_dhcp": true,
                    "dns_nameservers": self.settings.dns_nameservers } }),
                "subnet",
            )
            .await
            .map_err(backend_error)?;
        self.tag("subnets", &subnet.id, &tags).await?;
        let external = self.external_network().await?;
        if let Some(ext) = external {
            let router: Router = self
                .api
                .post_as(
                    Service::Network,
                    "/routers",
                    &json!({ "router": { "name": name,
                        "external_gateway_info": { "network_id": ext.id } } }),
                    "router",
                )
                .await
                .map_err(backend_error)?;
            self.tag("routers", &router.id, &tags).await?;
            self.api
                .call(
                    Service::Network,
                    Method::PUT,
                    &format!("/routers/{}/add_router_interface", router.id),
                    Some(&json!({ "subnet_id": subnet.id })),
                )
                .await
                .map_err(backend_error)?;
        } else {
            tracing::warn!(
                "no external network: the instance's network has no router (the VMs must reach the service some other way)"
            );
        }
        Ok(net.id)
    }

    /// Deletes the instance's routers, ports and networks (by tag).
    async fn release_network(&self, instance: &InstanceRef) -> Result<(), BackendError> {
        let tags = q(&instance_tag(&instance.id));
        // Dependents first: floating IPs and ports hold addresses of the
        // subnet, routers its interfaces; groups go once no port uses them.
        self.delete_all::<FloatingIp>(&tags).await?;
        self.delete_all::<Port>(&tags).await?;
        self.delete_all::<Router>(&tags).await?;
        self.delete_all::<Network>(&tags).await?;
        self.delete_all::<SecurityGroup>(&tags).await?;
        self.networks.lock().await.remove(&instance.id);
        Ok(())
    }

    /// Every `R` carrying all of `tags` (already query-encoded, comma
    /// separated).
    async fn list_tagged<R: Tagged>(&self, tags: &str) -> Result<Vec<R>, BackendError> {
        self.api
            .list_all(
                Service::Network,
                &format!("/{}?tags={tags}", R::PATH),
                R::KEY,
            )
            .await
            .map_err(backend_error)
    }

    /// Deletes one tagged resource (a router's interfaces are detached
    /// first: Neutron refuses otherwise).
    async fn delete_tagged<R: Tagged>(&self, r: &R) -> Result<(), BackendError> {
        if R::PATH == Router::PATH {
            return self.delete_router(r.id()).await;
        }
        self.api
            .delete(Service::Network, &format!("/{}/{}", R::PATH, r.id()))
            .await
            .map_err(backend_error)
    }

    async fn delete_all<R: Tagged>(&self, tags: &str) -> Result<(), BackendError> {
        for r in self.list_tagged::<R>(tags).await? {
            self.delete_tagged(&r).await?;
        }
        Ok(())
    }

    /// `gc` for one kind: deletes (unless `dry_run`) every `R` tagged `ibkit`
    /// that `doomed` picks, names it in `deleted`, counts the rest as kept.
    async fn sweep_kind<R: Tagged>(
        &self,
        doomed: impl Fn(&[String], Option<&str>) -> bool,
        dry_run: bool,
        deleted: &mut Vec<String>,
        kept: &mut usize,
    ) -> Result<(), BackendError> {
        for r in self.list_tagged::<R>(TAG).await? {
            if doomed(r.tags(), r.created_at()) {
                if !dry_run {
                    self.delete_tagged(&r).await?;
                }
                deleted.push(r.label());
            } else {
                *kept += 1;
            }
        }
        Ok(())
    }

    /// Drops the instance from the images it used; an image ibkit uploaded
    /// that no deployment uses any more is deleted unless kept.
    async fn release_images(&self, instance: &InstanceRef) -> Result<(), BackendError> {
        let tag = instance_tag(&instance.id);
        let images: Vec<Image> = self
            .api
            .list_all(
                Service::Image,
                &format!("/images?tag={}", q(&tag)),
                "images",
            )
            .await
            .map_err(backend_error)?;
        for i in images {
            self.api
                .delete(
                    Service::Image,
                    &format!("/images/{}/tags/{}", i.id, q(&tag)),
                )
                .await
                .map_err(backend_error)?;
            let used = i
                .tags
                .iter()
                .any(|t| t != &tag && t.starts_with(&format!("{META_INSTANCE}:")));
            if !used && !self.settings.keep_images && i.tags.iter().any(|t| t == TAG) {
                self.api
                    .delete(Service::Image, &format!("/images/{}", i.id))
                    .await
                    .map_err(backend_error)?;
                tracing::info!(image = %i.id, "deleted the uploaded image no deployment uses");
            }
        }
        // Ids may be gone now: a later deployment looks (or uploads) again.
        self.images.lock().await.clear();
        Ok(())
    }

    async fn delete_router(&self, id: &str) -> Result<(), BackendError> {
        let interfaces: Vec<Port> = self
            .api
            .list_all(
                Service::Network,
                &format!(
                    "/ports?device_id={}&device_owner=network%3Arouter_interface",
                    q(id)
                ),
                "ports",
            )
            .await
            .map_err(backend_error)?;
        for p in interfaces {
            let res = self
                .api
                .call(
                    Service::Network,
                    Method::PUT,
                    &format!("/routers/{id}/remove_router_interface"),
                    Some(&json!({ "port_id": p.id })),
                )
                .await;
            match res {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(backend_error(e)),
            }
        }
        self.api
            .delete(Service::Network, &format!("/routers/{id}"))
            .await
            .map_err(backend_error)
    }

    /// The host's security group (`ibkit-<instance>-<host>`): ingress TCP 22
    /// and the manifest's ports, and ICMP, from anywhere (IPv4); egress as
    /// Neutron makes it (everything). Missing rules are added on every
    /// creation, so a recreated VM gets the manifest's current ports.
    async fn security_group(&self, request: &VmRequest) -> Result<String, BackendError> {
        let host_tag = format!("{META_HOST}:{}", request.host);
        let found: Vec<SecurityGroup> = self
            .list_tagged(&format!(
                "{},{}",
                q(&instance_tag(&request.instance.id)),
                q(&host_tag)
            ))
            .await?;
        let sg = match found.into_iter().next() {
            Some(sg) => sg,
            None => {
                let sg: SecurityGroup = self
                    .api
                    .post_as(
                        Service::Network,
                        "/security-groups",
                        &json!({ "security_group": {
                            "name": format!("ibkit-{}-{}", request.instance.name, request.host),
                            "description": format!("ibkit host {} of {}", request.host, request.instance.name) } }),
                        "security_group",
                    )
                    .await
                    .map_err(backend_error)?;
                let mut tags = Self::tags_for(&request.instance);
                tags.push(host_tag);
                self.tag("security-groups", &sg.id, &tags).await?;
                sg
            }
        };
        let have: BTreeSet<(String, Option<u32>)> = sg
            .security_group_rules
            .iter()
            .filter(|r| {
                r.direction == "ingress"
                    && r.ethertype == "IPv4"
                    && r.remote_ip_prefix.as_deref() == Some("0.0.0.0/0")
            })
            .map(|r| (r.protocol.clone().unwrap_or_default(), r.port_range_min))
            .collect();
        let mut want: BTreeSet<(String, Option<u32>)> =
            BTreeSet::from([("tcp".to_string(), Some(22)), ("icmp".to_string(), None)]);
        want.extend(
            request
                .ports
                .iter()
                .map(|p| ("tcp".to_string(), Some(u32::from(*p)))),
        );
        for (protocol, port) in want.difference(&have) {
            let mut rule = json!({ "security_group_id": sg.id, "direction": "ingress",
                "ethertype": "IPv4", "protocol": protocol, "remote_ip_prefix": "0.0.0.0/0" });
            if let Some(p) = port {
                rule["port_range_min"] = json!(p);
                rule["port_range_max"] = json!(p);
            }
            self.api
                .call(
                    Service::Network,
                    Method::POST,
                    "/security-group-rules",
                    Some(&json!({ "security_group_rule": rule })),
                )
                .await
                .map_err(backend_error)?;
        }
        Ok(sg.id)
    }

    /// The external network: the one given, else the only one (`None`:
    /// there is none).
    async fn external_network(&self) -> Result<Option<Network>, BackendError> {
        if let Some(e) = &self.settings.external_network {
            return Ok(Some(self.resolve_network(e).await?));
        }
        let ext: Vec<Network> = self
            .api
            .get_as(
                Service::Network,
                "/networks?router%3Aexternal=true",
                "networks",
            )
            .await
            .map_err(backend_error)?;
        if ext.len() > 1 {
            return Err(BackendError::Other(format!(
                "{} external networks ({}); name one with --os-external-network",
                ext.len(),
                ext.iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(ext.into_iter().next())
    }

    async fn floating_ip(
        &self,
        request: &VmRequest,
        port: &Port,
    ) -> Result<std::net::IpAddr, BackendError> {
        let ext = self.external_network().await?.ok_or_else(|| {
            BackendError::Other("--os-floating-ip: the cloud has no external network".into())
        })?;
        let fip: FloatingIp = self
            .api
            .post_as(
                Service::Network,
                "/floatingips",
                &json!({ "floatingip": { "floating_network_id": ext.id, "port_id": port.id,
                    "description": format!("ibkit host {} of {}", request.host, request.instance.name) } }),
                "floatingip",
            )
            .await
            .map_err(backend_error)?;
        let mut tags = Self::tags_for(&request.instance);
        tags.push(format!("{META_HOST}:{}", request.host));
        self.tag("floatingips", &fip.id, &tags).await?;
        fip.floating_ip_address.parse().map_err(|_| {
            BackendError::Other(format!(
                "floating IP {}: {:?} is not an address",
                fip.id, fip.floating_ip_address
            ))
        })
    }

    /// Floating IPs bound to these ports (released before the ports go).
    async fn delete_floating_ips_of(&self, ports: &[Port]) -> Result<(), BackendError> {
        for p in ports {
            let fips: Vec<FloatingIp> = self
                .api
                .list_all(
                    Service::Network,
                    &format!("/floatingips?port_id={}", q(&p.id)),
                    "floatingips",
                )
                .await
                .map_err(backend_error)?;
            for f in fips.iter().filter(|f| f.tags.iter().any(|t| t == TAG)) {
                self.api
                    .delete(Service::Network, &format!("/floatingips/{}", f.id))
                    .await
                    .map_err(backend_error)?;
            }
        }
        Ok(())
    }

    async fn create_port(&self, request: &VmRequest, name: &str) -> Result<Port, BackendError> {
        let network = self.network_for(&request.instance).await?;
        let host_tag = format!("{META_HOST}:{}", request.host);
        // A server deleted behind our back leaves its port (Nova only
        // detaches ports it did not create): the host's unattached ports
        // are that, and go before the new one is made.
        let stale: Vec<Port> = self
            .list_tagged(&format!(
                "{},{}",
                q(&instance_tag(&request.instance.id)),
                q(&host_tag)
            ))
            .await?;
        let stale: Vec<Port> = stale
            .into_iter()
            .filter(|p| p.device_id.is_empty())
            .collect();
        self.delete_floating_ips_of(&stale).await?;
        for p in &stale {
            tracing::info!(port = %p.id, "deleting the port of a vanished server");
            self.api
                .delete(Service::Network, &format!("/ports/{}", p.id))
                .await
                .map_err(backend_error)?;
        }
        let security_group = self.security_group(request).await?;
        let port: Port = self
            .api
            .post_as(
                Service::Network,
                "/ports",
                &json!({ "port": { "name": name, "network_id": network,
                    "security_groups": [security_group],
                    "description": format!("ibkit host {} of {}", request.host, request.instance.name) } }),
                "port",
            )
            .await
            .map_err(backend_error)?;
        let mut tags = Self::tags_for(&request.instance);
        tags.push(host_tag);
        if let Err(e) = self.tag("ports", &port.id, &tags).await {
            let _ = self
                .api
                .delete(Service::Network, &format!("/ports/{}", port.id))
                .await;
            return Err(e);
        }
        Ok(port)
    }

    /// Deletes a server and waits until Nova forgets it.
    async fn delete_server_and_wait(&self, id: &str) -> Result<(), BackendError> {
        self.api
            .delete(Service::Compute, &format!("/servers/{}", q(id)))
            .await
            .map_err(backend_error)?;
        let started = Instant::now();
        while self.server(id).await?.is_some() {
            if started.elapsed() > self.settings.delete_timeout {
                return Err(BackendError::Unavailable(format!(
                    "server {id} is still there {} s after its deletion",
                    started.elapsed().as_secs()
                )));
            }
            tokio::time::sleep(self.settings.poll).await;
        }
        Ok(())
    }

    /// Deletes the ibkit-tagged ports a server had.
    async fn delete_ports(&self, ports: &[Port]) -> Result<(), BackendError> {
        for p in ports.iter().filter(|p| p.tags.iter().any(|t| t == TAG)) {
            self.api
                .delete(Service::Network, &format!("/ports/{}", p.id))
                .await
                .map_err(backend_error)?;
        }
        Ok(())
    }

    async fn ports_of(&self, server_id: &str) -> Result<Vec<Port>, BackendError> {
        self.api
            .list_all(
                Service::Network,
                &format!("/ports?device_id={}", q(server_id)),
                "ports",
            )
            .await
            .map_err(backend_error)
    }

    async fn console_output(&self, id: &str, max_bytes: usize) -> Result<String, BackendError> {
        // Nova counts lines; ask for enough lines of an 80-column console.
        let lines = (max_bytes / 40).clamp(10, 100_000);
        let v = self
            .api
            .call(
                Service::Compute,
                Method::POST,
                &format!("/servers/{}/action", q(id)),
                Some(&json!({ "os-getConsoleOutput": { "length": lines } })),
            )
            .await;
        match v {
            Ok(v) => Ok(tail_bytes(
                v.as_ref()
                    .and_then(|v| v.get("output"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                max_bytes,
            )
            .to_string()),
            // Nova's own words: a stopped libvirt guest has "no console
            // available", which is not a missing server.
            Err(e) => Err(backend_error(e)),
        }
    }

    async fn save_evidence(&self, server: &Server, raw: &Value) -> Result<Evidence, BackendError> {
        let console = match self.console_output(&server.id, 1 << 20).await {
            Ok(c) => c,
            Err(e) => format!("(no console output: {e})\n"),
        };
        let dir = self.settings.evidence_dir.join(format!(
            "{}-{}",
            server.name.replace(['/', '\\'], "_"),
            unix_ms()
        ));
        std::fs::create_dir_all(&dir)?;
        let console_path = dir.join("console.log");
        std::fs::write(&console_path, console)?;
        // The server document without anything user-data-like (an admin
        // token would read the pairing key back).
        let mut doc = raw.clone();
        if let Some(o) = doc.as_object_mut() {
            o.retain(|k, _| !k.to_ascii_lowercase().contains("user_data"));
        }
        let doc_path = dir.join("server.json");
        std::fs::write(
            &doc_path,
            serde_json::to_vec_pretty(&doc).map_err(|e| BackendError::Other(e.to_string()))?,
        )?;
        Ok(Evidence {
            paths: vec![console_path, doc_path],
            retained: Vec::new(),
        })
    }

    /// Deletes what ibkit created (servers by metadata, Neutron resources by
    /// tag) whose instance is not in `live` and that is older than
    /// `older_than`: what a crashed or interrupted `ibkit deploy` left.
    pub async fn sweep(
        &self,
        live: &BTreeSet<uuid::Uuid>,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<SweepReport, BackendError> {
        let now = unix_secs();
        // A resource whose age cannot be read is treated as old: it is
        // ours by tag and its deployment is gone.
        let old = |created: Option<&str>| {
            created
                .and_then(parse_utc)
                .is_none_or(|t| now.saturating_sub(t) >= older_than.as_secs())
        };
        // Ours (tagged `ibkit`) and used by no live deployment.
        let orphan_tag = |tags: &[String]| {
            tags.iter().any(|t| t == TAG)
                && !tags.iter().any(|t| {
                    t.strip_prefix(META_INSTANCE)
                        .and_then(|r| r.strip_prefix(':'))
                        .and_then(|id| uuid::Uuid::parse_str(id).ok())
                        .is_some_and(|id| live.contains(&id))
                })
        };
        let mut report = SweepReport::default();
        let servers: Vec<Server> = self
            .api
            .list_all(
                Service::Compute,
                &format!("/servers/detail?name={}", q("^ibkit-")),
                "servers",
            )
            .await
            .map_err(backend_error)?;
        for s in servers {
            let Some(instance) = s.metadata.get(META_INSTANCE) else {
                continue;
            };
            let orphan = uuid::Uuid::parse_str(instance).map_or(true, |id| !live.contains(&id));
            if orphan && old(s.created.as_deref()) {
                let ports = self.ports_of(&s.id).await?;
                if !dry_run {
                    self.delete_server_and_wait(&s.id).await?;
                    self.delete_ports(&ports).await?;
                }
                report.servers.push(format!("{} ({})", s.name, s.id));
                report.ports.extend(
                    ports
                        .iter()
                        .filter(|p| p.tags.iter().any(|t| t == TAG))
                        .map(|p| format!("{} ({})", p.name, p.id)),
                );
            } else {
                report.kept += 1;
            }
        }
        let doomed = |tags: &[String], created: Option<&str>| orphan_tag(tags) && old(created);
        let kept = &mut report.kept;
        self.sweep_kind::<FloatingIp>(&doomed, dry_run, &mut report.floating_ips, kept)
            .await?;
        self.sweep_kind::<Port>(&doomed, dry_run, &mut report.ports, kept)
            .await?;
        self.sweep_kind::<SecurityGroup>(&doomed, dry_run, &mut report.security_groups, kept)
            .await?;
        self.sweep_kind::<Router>(&doomed, dry_run, &mut report.routers, kept)
            .await?;
        self.sweep_kind::<Network>(&doomed, dry_run, &mut report.networks, kept)
            .await?;
        // Uploads: only this project's (an image shared into it is not
        // ours to delete, whatever its tags say).
        let project = self.api.project_id().await.map_err(backend_error)?;
        let images: Vec<Image> = self
            .api
            .list_all(
                Service::Image,
                &format!("/images?tag={TAG}&owner={}", q(&project)),
                "images",
            )
            .await
            .map_err(backend_error)?;
        for i in images {
            // An upload that never finished (a killed `up`) is garbage
            // whoever started it, once old enough.
            let unfinished = matches!(
                i.status.as_str(),
                "queued" | "saving" | "importing" | "uploading"
            );
            if (unfinished || orphan_tag(&i.tags)) && old(i.created_at.as_deref()) {
                if !dry_run {
                    self.api
                        .delete(Service::Image, &format!("/images/{}", i.id))
                        .await
                        .map_err(backend_error)?;
                }
                report.images.push(format!(
                    "{} ({}, {})",
                    i.name.as_deref().unwrap_or(""),
                    i.id,
                    i.status
                ));
            } else {
                report.kept += 1;
            }
        }
        Ok(report)
    }
}

impl ComputeBackend for OpenStackBackend {
    fn spec(&self) -> crate::store::BackendSpec {
        crate::store::BackendSpec::Openstack {
            cloud: self.api.cloud().name.clone(),
            network: self.settings.network.clone(),
            floating_ips: self.settings.floating_ips,
        }
    }

    async fn create_vm(&self, request: VmRequest) -> Result<VmHandle, BackendError> {
        if !fits_openstack(&request.user_data) {
            return Err(BackendError::Other(format!(
                "the user data of host {} is {} bytes, {} once base64-encoded; Nova takes at most {OPENSTACK_USER_DATA_MAX_BASE64} (move files into the image or fetch them from a script)",
                request.host,
                request.user_data.len(),
                request.user_data.len().div_ceil(3) * 4
            )));
        }
        let name = server_name(&request.instance.name, &request.host, request.attempt);
        let image = self.image_id(&request.image, &request.instance).await?;
        let flavor = self
            .flavor_id(&request.flavor, request.os_flavor.as_deref())
            .await?;
        let port = self.create_port(&request, &name).await?;
        let metadata = json!({
            META_INSTANCE: request.instance.id.to_string(),
            META_DEPLOYMENT: request.instance.name,
            META_HOST: request.host,
            META_ATTEMPT: request.attempt.to_string(),
            META_CONFIG_HASH: request.config_hash,
        });
        let body = json!({ "server": {
            "name": name,
            "imageRef": image,
            "flavorRef": flavor,
            "networks": [{ "port": port.id }],
            "config_drive": true,
            "user_data": base64::engine::general_purpose::STANDARD.encode(&request.user_data),
            "metadata": metadata,
        }});
        let created: Value = match self
            .api
            .post_as(Service::Compute, "/servers", &body, "server")
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let _ = self
                    .api
                    .delete(Service::Network, &format!("/ports/{}", port.id))
                    .await;
                return Err(backend_error(e));
            }
        };
        let id = created
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| BackendError::Other("Nova created a server without an id".into()))?;
        tracing::info!(server = %id, name = %name, "server requested");
        let started = Instant::now();
        let failure = loop {
            match self.server(&id).await? {
                None => break format!("server {name} ({id}) vanished while building"),
                Some(s) if s.status == "ACTIVE" => {
                    let mut addresses = addresses_of(&s);
                    if addresses.is_empty() {
                        addresses = port
                            .fixed_ips
                            .iter()
                            .filter_map(|f| f.ip_address.parse().ok())
                            .collect();
                    }
                    if self.settings.floating_ips {
                        match self.floating_ip(&request, &port).await {
                            Ok(ip) => addresses.push(ip),
                            Err(e) => break format!("server {name} ({id}): {e}"),
                        }
                    }
                    return Ok(VmHandle {
                        id,
                        host: request.host,
                        addresses,
                    });
                }
                Some(s) if s.status == "ERROR" => {
                    let fault = s.fault.map(|f| f.message).unwrap_or_default();
                    break format!(
                        "server {name} ({id}) went to ERROR: {}",
                        if fault.is_empty() {
                            "Nova gave no fault"
                        } else {
                            &fault
                        }
                    );
                }
                Some(s) if started.elapsed() > self.settings.active_timeout => {
                    break format!(
                        "server {name} ({id}) is still {} after {} s",
                        s.status,
                        started.elapsed().as_secs()
                    );
                }
                Some(_) => tokio::time::sleep(self.settings.poll).await,
            }
        };
        // What the guest printed, if it got that far.
        let failure = match self.console_output(&id, 4096).await {
            Ok(c) if !c.trim().is_empty() => format!(
                "{failure}\nconsole tail:\n{}",
                c.lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            _ => failure,
        };
        // A server that cannot run holds quota: delete it, and its port.
        if let Err(e) = self
            .delete_floating_ips_of(std::slice::from_ref(&port))
            .await
        {
            tracing::warn!(server = %id, error = %e, "releasing a failed server's floating IP");
        }
        if let Err(e) = self.delete_server_and_wait(&id).await {
            tracing::warn!(server = %id, error = %e, "deleting a failed server");
        }
        let _ = self
            .api
            .delete(Service::Network, &format!("/ports/{}", port.id))
            .await;
        let lower = failure.to_ascii_lowercase();
        Err(
            if lower.contains("no valid host") || lower.contains("quota") {
                BackendError::Capacity(failure)
            } else {
                BackendError::Other(failure)
            },
        )
    }

    async fn delete_vm(&self, id: &str, keep_evidence: bool) -> Result<Evidence, BackendError> {
        let raw = match self
            .api
            .call(
                Service::Compute,
                Method::GET,
                &format!("/servers/{}", q(id)),
                None,
            )
            .await
        {
            Ok(Some(v)) => v.get("server").cloned().unwrap_or(Value::Null),
            Ok(None) => return Ok(Evidence::default()),
            Err(e) if e.is_not_found() => return Ok(Evidence::default()),
            Err(e) => return Err(backend_error(e)),
        };
        let server: Server = serde_json::from_value(raw.clone())
            .map_err(|e| BackendError::Other(format!("server {id}: {e}")))?;
        let evidence = if keep_evidence {
            self.save_evidence(&server, &raw).await?
        } else {
            Evidence::default()
        };
        let ports = self.ports_of(id).await?;
        self.delete_floating_ips_of(&ports).await?;
        self.delete_server_and_wait(id).await?;
        self.delete_ports(&ports).await?;
        Ok(evidence)
    }

    async fn vm_state(&self, id: &str) -> Result<VmState, BackendError> {
        Ok(self
            .server(id)
            .await?
            .map_or(VmState::Missing, |s| vm_state_of(&s)))
    }

    async fn list(&self, instance: &InstanceRef) -> Result<Vec<VmInfo>, BackendError> {
        let prefix = format!("^{}", regex_literal(&format!("ibkit-{}-", instance.name)));
        let servers: Vec<Server> = self
            .api
            .list_all(
                Service::Compute,
                &format!("/servers/detail?name={}", q(&prefix)),
                "servers",
            )
            .await
            .map_err(backend_error)?;
        let id = instance.id.to_string();
        Ok(servers
            .into_iter()
            .filter(|s| s.metadata.get(META_INSTANCE) == Some(&id))
            .map(|s| VmInfo {
                state: vm_state_of(&s),
                config_hash: s
                    .metadata
                    .get(META_CONFIG_HASH)
                    .cloned()
                    .unwrap_or_default(),
                attempt: s
                    .metadata
                    .get(META_ATTEMPT)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                handle: VmHandle {
                    addresses: addresses_of(&s),
                    host: s.metadata.get(META_HOST).cloned().unwrap_or_default(),
                    id: s.id,
                },
            })
            .collect())
    }

    async fn console_tail(&self, id: &str, max_bytes: usize) -> Result<String, BackendError> {
        self.console_output(id, max_bytes).await
    }

    async fn release_instance(&self, instance: &InstanceRef) -> Result<(), BackendError> {
        self.release_network(instance).await?;
        self.release_images(instance).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters() {
        assert_eq!(server_name("shop", "db", 3), "ibkit-shop-db-a3");
        assert_eq!(q("^ibkit-a b/c"), "%5Eibkit-a%20b%2Fc");
        assert_eq!(regex_literal("ibkit-x.y-"), "ibkit-x\\.y-");
    }

    #[test]
    fn server_states() {
        let s = |status: &str, task: Option<&str>| Server {
            id: "1".into(),
            name: "n".into(),
            status: status.into(),
            metadata: BTreeMap::new(),
            addresses: BTreeMap::new(),
            fault: None,
            task_state: task.map(str::to_string),
            created: None,
        };
        assert_eq!(vm_state_of(&s("ACTIVE", None)), VmState::Running);
        assert_eq!(vm_state_of(&s("BUILD", None)), VmState::Running);
        assert_eq!(vm_state_of(&s("SHUTOFF", None)), VmState::Stopped);
        assert_eq!(vm_state_of(&s("ERROR", None)), VmState::Stopped);
        assert_eq!(
            vm_state_of(&s("ACTIVE", Some("deleting"))),
            VmState::Stopped
        );
        assert_eq!(vm_state_of(&s("SOFT_DELETED", None)), VmState::Missing);
    }

    #[test]
    fn error_kinds() {
        let http = |status, message: &str| ApiError::Http {
            service: "Nova",
            method: "POST".into(),
            path: "/servers".into(),
            status,
            message: message.into(),
        };
        assert!(matches!(
            backend_error(http(
                403,
                "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"
            )),
            BackendError::Capacity(_)
        ));
        assert!(matches!(
            backend_error(http(503, "down")),
            BackendError::Unavailable(_)
        ));
        assert!(matches!(
            backend_error(http(400, "Invalid imageRef")),
            BackendError::Other(m) if m.contains("Invalid imageRef") && m.contains("POST /servers")
        ));
    }

    #[test]
    fn image_formats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("a.raw");
        std::fs::write(&raw, [0u8; 512]).expect("write");
        assert_eq!(disk_format(&raw).ok(), Some("raw"));
        let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
        qcow.extend_from_slice(&[0u8; 8]);
        let plain = dir.path().join("a.qcow2");
        std::fs::write(&plain, &qcow).expect("write");
        assert_eq!(disk_format(&plain).ok(), Some("qcow2"));
        qcow[15] = 0x70; // a backing file offset
        let overlay = dir.path().join("b.qcow2");
        std::fs::write(&overlay, &qcow).expect("write");
        assert!(
            matches!(disk_format(&overlay), Err(BackendError::Image { why, .. }) if why.contains("backing file"))
        );
        let empty = dir.path().join("e");
        std::fs::write(&empty, b"").expect("write");
        assert!(disk_format(&empty).is_err());
    }
}
