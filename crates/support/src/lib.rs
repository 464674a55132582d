//! The one home of the small helpers several ibkit crates need, so their
//! copies cannot drift: atomic file writes that survive a crash ([`fs`]),
//! the clock and UTC dates ([`clock`]), the tails of logs and consoles
//! ([`text`]), secrets that never print ([`secret`]) and the user names
//! and paths a VM's files may have ([`posix`]). No dependencies beyond
//! `std`: every crate, the portable agent included, can use it.

pub mod clock;
pub mod fs;
pub mod posix;
pub mod secret;
pub mod text;
