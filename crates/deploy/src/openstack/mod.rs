//! The OpenStack backend: an instance's VMs as Nova servers on a real cloud.
//!
//! - [`config`]: which cloud, from `clouds.yaml`/`secure.yaml` or `OS_*`
//!   variables, as the OpenStack client tools read them;
//! - [`api`]: a thin typed client for Keystone v3, Nova, Glance v2 and
//!   Neutron (about twenty calls, each failure naming service, method, path
//!   and the cloud's own message);
//! - [`backend`]: [`OpenStackBackend`], the [`crate::ComputeBackend`] on
//!   top of it, and the sweep behind `ibkit deploy gc`.
//!
//! Why not `openstack_sdk`: it is 268 crates (our whole deploy crate is a
//! fraction of that), brings `ring` as a second TLS crypto provider and an
//! on-disk token cache we would have to turn off, and its generated
//! per-endpoint types still leave the error mapping to us. reqwest is
//! already in the tree.

pub mod api;
pub mod backend;
pub mod config;

pub use api::{ApiError, CloudApi};
pub use backend::{OpenStackBackend, OpenStackSettings, SweepReport};
pub use config::{CloudConfig, ConfigError, ConfigSources, load_cloud};
