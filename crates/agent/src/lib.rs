//! `ibkit-agent`: the in-VM agent of ibkit.
//!
//! It pairs with the configuration service, long-polls for steps, runs each
//! through a detached step runner ([`runner`]) with the platform's
//! semantics ([`executor`]), journals everything under its state directory
//! ([`journal`]) so an agent restart or VM reboot loses nothing, delivers
//! reports in order from an on-disk outbox ([`outbox`]) and runs health
//! checks ([`health`]), and keeps the marketplace's billing token file
//! current ([`billing_token`]). See `docs/agent.md`.

pub mod agent;
pub mod billing_token;
pub mod client;
pub mod config;
pub mod executor;
pub mod health;
pub mod journal;
pub mod outbox;
pub mod runner;

pub use executor::{Executor, recover_local, run_local};
