//! Every limit that protects us from hostile images, in one place.

/// Longest qcow2 backing chain we follow.
pub const MAX_BACKING_DEPTH: usize = 16;
/// Symlinks followed while resolving one guest path (Linux uses 40).
pub const MAX_SYMLINK_HOPS: usize = 40;
/// Longest guest path we build while resolving.
pub const MAX_PATH_LEN: usize = 4096;
/// Default cap on one file read into memory.
pub const DEFAULT_READ_CAP: u64 = 64 * 1024 * 1024;
/// Most partitions we accept in one table (GPT allows 128 by default).
pub const MAX_PARTITIONS: usize = 256;
/// Most logical partitions in an MBR extended chain.
pub const MAX_LOGICAL_PARTITIONS: usize = 64;
/// Most entries returned for one directory.
pub const MAX_DIR_ENTRIES: usize = 1_000_000;
/// Most fstab lines considered.
pub const MAX_FSTAB_ENTRIES: usize = 256;
/// Most entries in a qcow2 L1 table (2 PiB of virtual disk at 64 KiB clusters).
pub const QCOW2_MAX_L1_ENTRIES: u64 = 32 << 20;
/// Bytes of qcow2 L2 tables kept in memory (a 64 KiB table maps 512 MiB).
pub const QCOW2_L2_CACHE_BYTES: u64 = 2 << 20;
/// Bytes of decompressed qcow2 clusters kept in memory, shared by every
/// thread reading the image. A `check` of a typical cloud image touches
/// less than this, so each compressed cluster is inflated once per run.
pub const QCOW2_CLUSTER_CACHE_BYTES: u64 = 32 << 20;
/// Most compressed bytes fetched with one host read for one request.
pub const QCOW2_MAX_READ_BATCH: u64 = 4 << 20;
/// Bytes of path → metadata lookups the guest view keeps (an LRU: a walk
/// of a huge or looping tree evicts old paths instead of growing).
pub const GUEST_LOOKUP_CACHE_BYTES: u64 = 4 << 20;
/// Default directory budget of a tree walk ([`crate::guest::Walker`]):
/// directories listed at most, whichever roots the walk starts from.
pub const WALK_MAX_DIRS: usize = 100_000;
/// Default entry budget of a tree walk: directory entries of every kind
/// handed to the caller at most.
pub const WALK_MAX_ENTRIES: usize = 2_000_000;
/// Default depth of a tree walk: directories deeper than this below the
/// walk's root are not listed.
pub const WALK_MAX_DEPTH: usize = 64;
