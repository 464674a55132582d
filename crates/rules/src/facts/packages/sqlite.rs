//! RPM's sqlite backend (`rpmdb.sqlite`, rpm ≥ 4.16): the `Packages` table's
//! `blob` column holds one header per installed package.
//!
//! The file is read through the guest into memory, committed frames of
//! `rpmdb.sqlite-wal` are applied to that copy (as sqlite would on open),
//! and the copy is handed to sqlite with `sqlite3_deserialize`, read-only:
//! nothing is extracted to the host and nothing is written.

use ibkit_image::Guest;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{DbRead, RPMDB_READ_CAP, rpmhdr};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The database page size from its header, if valid.
fn db_page_size(db: &[u8]) -> Option<usize> {
    let raw = u16::from_be_bytes([*db.get(16)?, *db.get(17)?]) as usize;
    let size = if raw == 1 { 65536 } else { raw };
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}

fn be32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// sqlite's WAL checksum over `data` (a multiple of 8 bytes), continuing
/// from `s`.
fn wal_checksum(big_endian: bool, data: &[u8], mut s: (u32, u32)) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (
                u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s.0 = s.0.wrapping_add(a).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(b).wrapping_add(s.0);
    }
    s
}

/// Apply the committed transactions of a write-ahead log to the database
/// image `db`, as sqlite does when it opens a database whose WAL was not
/// checkpointed. Frames after the last valid commit frame (an unfinished
/// transaction) are ignored, as sqlite ignores them. Returns the number of
/// frames applied; `Err` if the WAL header itself is invalid (sqlite would
/// then ignore the whole file).
pub(super) fn apply_wal(db: &mut Vec<u8>, wal: &[u8], cap: usize) -> Result<usize, String> {
    const HDR: usize = 32;
    const FRAME_HDR: usize = 24;
    if wal.len() < HDR {
        return Err(format!("WAL of {} bytes has no complete header", wal.len()));
    }
    let magic = be32(wal, 0);
    let big_endian = match magic {
        0x377f_0682 => false,
        0x377f_0683 => true,
        _ => return Err(format!("bad WAL magic {magic:#010x}")),
    };
    let page_size = be32(wal, 8) as usize;
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(format!("bad WAL page size {page_size}"));
    }
    if !db.is_empty() && db_page_size(db) != Some(page_size) {
        return Err(format!(
            "WAL page size {page_size} differs from the database's {:?}",
            db_page_size(db)
        ));
    }
    let (salt1, salt2) = (be32(wal, 16), be32(wal, 20));
    let mut sum = wal_checksum(big_endian, &wal[..24], (0, 0));
    if sum != (be32(wal, 24), be32(wal, 28)) {
        return Err("WAL header checksum mismatch".into());
    }
    // First pass: find the last valid commit frame.
    let frame_len = FRAME_HDR + page_size;
    let mut committed_frames = 0usize;
    let mut committed_pages = 0usize;
    let mut n = 0usize;
    while let Some(frame) = wal.get(HDR + n * frame_len..HDR + (n + 1) * frame_len) {
        let (pgno, commit) = (be32(frame, 0), be32(frame, 4));
        if pgno == 0 || be32(frame, 8) != salt1 || be32(frame, 12) != salt2 {
            break;
        }
        sum = wal_checksum(big_endian, &frame[..8], sum);
        sum = wal_checksum(big_endian, &frame[FRAME_HDR..], sum);
        if sum != (be32(frame, 16), be32(frame, 20)) {
            break;
        }
        n += 1;
        if commit != 0 {
            committed_frames = n;
            committed_pages = commit as usize;
        }
    }
    if committed_frames == 0 {
        return Ok(0);
    }
    let new_len = committed_pages
        .checked_mul(page_size)
        .filter(|&l| l <= cap)
        .ok_or_else(|| {
            format!("WAL grows the database to {committed_pages} pages, beyond the read limit")
        })?;
    db.resize(new_len, 0);
    for i in 0..committed_frames {
        let frame = &wal[HDR + i * frame_len..HDR + (i + 1) * frame_len];
        let pgno = be32(frame, 0) as usize;
        if pgno > committed_pages {
            // A page beyond the committed size (truncated later): skip.
            continue;
        }
        let at = (pgno - 1) * page_size;
        db[at..at + page_size].copy_from_slice(&frame[FRAME_HDR..]);
    }
    Ok(committed_frames)
}

/// Open the database image read-only in memory.
fn open(db: &[u8]) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        ":memory:",
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_MEMORY,
    )?;
    conn.deserialize_read_exact("main", db, db.len(), true)?;
    // A hostile schema must not run anything; corrupt cells are caught early.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
        false,
    )?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA cell_size_check = ON;")?;
    Ok(conn)
}

/// Headers parsed, headers that failed, the first failure.
#[derive(Default)]
struct Scan {
    read: DbRead,
    bad: usize,
    first_bad: Option<String>,
}

/// Read every row into `out`; `Err` if the scan had to stop.
fn scan(conn: &Connection, db_len: usize, out: &mut Scan) -> Result<(), String> {
    let ty: Option<String> = match conn.query_row(
        "SELECT type FROM sqlite_master WHERE name = 'Packages' COLLATE NOCASE",
        [],
        |r| r.get(0),
    ) {
        Ok(t) => Some(t),
        Err(rusqlite::Error::QueryReturnedNoRows) => None,
        Err(e) => return Err(format!("cannot read the schema: {e}")),
    };
    match ty.as_deref() {
        Some("table") => {}
        Some(t) => return Err(format!("`Packages` is a {t}, not a table")),
        None => return Err("no `Packages` table".into()),
    }
    let mut stmt = match conn.prepare("SELECT hnum, blob FROM Packages") {
        Ok(s) => s,
        Err(e) => return Err(format!("cannot query `Packages`: {e}")),
    };
    let mut rows = match stmt.query([]) {
        Ok(r) => r,
        Err(e) => return Err(format!("cannot query `Packages`: {e}")),
    };
    // A corrupt b-tree can make sqlite visit the same cells again and again;
    // a sound database cannot hold more blob bytes than its size.
    let budget = db_len.saturating_mul(2).saturating_add(1 << 20);
    let mut seen_bytes = 0usize;
    let mut seen_rows = 0usize;
    loop {
        let row = match rows.next() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                let n = out.read.packages.len();
                return Err(format!("database is corrupt after {n} packages: {e}"));
            }
        };
        seen_rows += 1;
        let hnum: i64 = row.get(0).unwrap_or(-1);
        let res = match row.get_ref(1) {
            Ok(ValueRef::Blob(b)) => {
                seen_bytes = seen_bytes.saturating_add(b.len());
                rpmhdr::parse_header(b)
            }
            Ok(other) => Err(format!("blob column holds {:?}", other.data_type())),
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(p) => out.read.packages.push(p),
            Err(e) => {
                out.bad += 1;
                if out.first_bad.is_none() {
                    out.first_bad = Some(format!("hnum {hnum}: {e}"));
                }
            }
        }
        if seen_bytes > budget || seen_rows > db_len / 4 + 16 {
            return Err("database is corrupt (it yields more rows than it can hold)".into());
        }
    }
    Ok(())
}

/// Read an `rpmdb.sqlite`.
pub(super) fn read(guest: &Guest, path: &str) -> DbRead {
    let mut db = match guest.read_capped(path, RPMDB_READ_CAP) {
        Ok(Some(d)) => d,
        Ok(None) => return DbRead::failed(format!("{path} is not a regular file")),
        Err(e) => return DbRead::failed(format!("cannot read {path}: {e}")),
    };
    let mut warnings = Vec::new();
    let wal_path = format!("{path}-wal");
    match guest.read_capped(&wal_path, RPMDB_READ_CAP) {
        Ok(Some(wal)) if !wal.is_empty() => match apply_wal(&mut db, &wal, RPMDB_READ_CAP as usize)
        {
            Ok(0) => {}
            Ok(n) => warnings.push(format!(
                "{wal_path}: applied {n} committed frame(s) not yet checkpointed into {path}"
            )),
            Err(e) => warnings.push(format!(
                "{wal_path} is not a valid write-ahead log ({e}); ignored, as sqlite would"
            )),
        },
        Ok(_) => {}
        Err(e) => warnings.push(format!(
            "cannot read {wal_path} ({e}): committed changes not yet checkpointed may be missing"
        )),
    }
    if db.is_empty() {
        // A zero-length file is an empty sqlite database.
        return DbRead {
            warnings,
            ..DbRead::default()
        };
    }
    if db.len() < 100 || !db.starts_with(SQLITE_MAGIC) {
        return DbRead {
            error: Some(format!("{path} is not an sqlite database")),
            warnings,
            ..DbRead::default()
        };
    }
    // Bytes 18-19 = 2 mark a WAL-mode database, which an in-memory copy
    // cannot open; the WAL was applied above, so present it as a rollback-
    // journal database.
    if db[18] == 2 {
        db[18] = 1;
    }
    if db[19] == 2 {
        db[19] = 1;
    }
    let conn = match open(&db) {
        Ok(c) => c,
        Err(e) => {
            return DbRead {
                error: Some(format!("cannot open {path}: {e}")),
                warnings,
                ..DbRead::default()
            };
        }
    };
    let db_len = db.len();
    drop(db);
    let mut scan_out = Scan::default();
    let fatal = scan(&conn, db_len, &mut scan_out).err();
    let scan = scan_out;
    let mut read = scan.read;
    read.warnings = warnings;
    read.error = match (fatal, scan.bad) {
        (Some(e), 0) => Some(format!("{path}: {e}")),
        (Some(e), bad) => Some(format!(
            "{path}: {e}; also {bad} unreadable package header(s)"
        )),
        (None, 0) => None,
        (None, bad) => Some(format!(
            "{path}: {bad} of {} package headers are unreadable ({}); the list is incomplete",
            bad + read.packages.len(),
            scan.first_bad.unwrap_or_default()
        )),
    };
    read
}
