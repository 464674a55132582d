//! dpkg's status database: `/var/lib/dpkg/status`, RFC 822-style stanzas,
//! plus the journal files in `/var/lib/dpkg/updates/` that dpkg merges in on
//! its next run (present after an interrupted dpkg).

use std::collections::HashMap;

use ibkit_image::Guest;

use super::{DPKG_READ_CAP, DPKG_STATUS, DPKG_UPDATES, DbRead, Package};

/// The dpkg states (third word of `Status`) in which a package's files are
/// on disk, and which therefore count as installed.
pub const ON_DISK_STATES: [&str; 6] = [
    "installed",
    "half-configured",
    "unpacked",
    "half-installed",
    "triggers-awaited",
    "triggers-pending",
];

/// Most journal files read from `updates/` (dpkg writes one per status
/// change and merges them on its next run: a handful at most).
const MAX_UPDATE_FILES: usize = 10_000;

/// One stanza, as far as we care.
#[derive(Debug)]
struct Entry {
    pkg: Package,
    on_disk: bool,
}

/// The stanzas read so far, later ones replacing earlier ones for the same
/// package instance (as dpkg does with its journal).
#[derive(Default)]
struct Db {
    entries: Vec<Entry>,
    by_name: HashMap<String, Vec<usize>>,
}

impl Db {
    fn add(&mut self, e: Entry) {
        // An instance is a name and an architecture. (A journal entry that
        // crossgrades a package to another architecture leaves the old
        // instance listed too: an over-report of an installed name, never
        // a miss.)
        let slots = self.by_name.entry(e.pkg.name.clone()).or_default();
        match slots
            .iter()
            .copied()
            .find(|&i| self.entries[i].pkg.arch == e.pkg.arch)
        {
            Some(i) => self.entries[i] = e,
            None => {
                slots.push(self.entries.len());
                self.entries.push(e);
            }
        }
    }

    fn into_installed(self) -> Vec<Package> {
        self.entries
            .into_iter()
            .filter(|e| e.on_disk)
            .map(|e| e.pkg)
            .collect()
    }
}

/// Fields of the stanza being read, borrowed from the file.
#[derive(Default)]
struct Fields<'a> {
    package: &'a [u8],
    status: &'a [u8],
    version: &'a [u8],
    arch: &'a [u8],
    source: &'a [u8],
    /// `Provides` and its continuation lines.
    provides: Vec<&'a [u8]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Provides,
    Other,
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

fn text(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// The package name at the start of a relation (`foo (= 1.0)`, `bar:any`).
fn relation_name(s: &[u8]) -> &[u8] {
    let s = trim(s);
    let end = s
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'(' | b':' | b'[' | b'<'))
        .unwrap_or(s.len());
    &s[..end]
}

impl Fields<'_> {
    fn finish(&self) -> Option<Entry> {
        if self.package.is_empty() {
            return None;
        }
        let state = self
            .status
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty())
            .nth(2)
            .unwrap_or(b"");
        let on_disk = ON_DISK_STATES.iter().any(|s| s.as_bytes() == state);
        let mut provides = Vec::new();
        for part in &self.provides {
            for rel in part.split(|&b| b == b',') {
                // Alternatives are not allowed in Provides, but be lenient.
                for alt in rel.split(|&b| b == b'|') {
                    let n = relation_name(alt);
                    if !n.is_empty() {
                        provides.push(text(n));
                    }
                }
            }
        }
        let source = relation_name(self.source);
        Some(Entry {
            pkg: Package {
                name: text(self.package),
                version: text(self.version),
                arch: text(self.arch),
                state: text(state),
                source: (!source.is_empty()).then(|| text(source)),
                provides,
            },
            on_disk,
        })
    }
}

/// Parse stanzas into `db`.
fn parse_into(data: &[u8], db: &mut Db) {
    let mut cur = Fields::default();
    let mut in_stanza = false;
    let mut last = Field::Other;
    for line in data.split(|&b| b == b'\n') {
        // As in dpkg, only an empty line ends a stanza; a line starting with
        // a space or tab continues the previous field even if it holds only
        // whitespace. (A lone CR is taken as empty too, where dpkg would
        // refuse the whole file.)
        if line.is_empty() || line == b"\r" {
            if in_stanza {
                if let Some(e) = cur.finish() {
                    db.add(e);
                }
                cur = Fields::default();
                in_stanza = false;
            }
            continue;
        }
        if matches!(line[0], b' ' | b'\t') {
            if in_stanza && last == Field::Provides {
                cur.provides.push(line);
            }
            continue;
        }
        in_stanza = true;
        last = Field::Other;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        // Field names are case-insensitive; dispatch on length first.
        match name.len() {
            6 if name.eq_ignore_ascii_case(b"Status") => cur.status = value,
            6 if name.eq_ignore_ascii_case(b"Source") => cur.source = value,
            7 if name.eq_ignore_ascii_case(b"Package") => cur.package = value,
            7 if name.eq_ignore_ascii_case(b"Version") => cur.version = value,
            8 if name.eq_ignore_ascii_case(b"Provides") => {
                cur.provides.push(value);
                last = Field::Provides;
            }
            12 if name.eq_ignore_ascii_case(b"Architecture") => cur.arch = value,
            _ => {}
        }
    }
    if in_stanza && let Some(e) = cur.finish() {
        db.add(e);
    }
}

/// The installed packages (those in [`ON_DISK_STATES`]) of a dpkg status
/// file, in file order. Multi-arch instances of one name are all returned.
pub fn parse_status(data: &[u8]) -> Vec<Package> {
    let mut db = Db::default();
    parse_into(data, &mut db);
    db.into_installed()
}

/// Journal file names: all digits, applied in numeric order.
fn journal_files(guest: &Guest) -> Result<Vec<String>, String> {
    let entries = match guest.read_dir(DPKG_UPDATES) {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {DPKG_UPDATES}: {e}")),
    };
    let mut names: Vec<Vec<u8>> = entries
        .into_iter()
        .map(|e| e.name)
        .filter(|n| !n.is_empty() && n.len() <= 32 && n.iter().all(u8::is_ascii_digit))
        .collect();
    if names.len() > MAX_UPDATE_FILES {
        return Err(format!(
            "{DPKG_UPDATES} holds more than {MAX_UPDATE_FILES} journal files"
        ));
    }
    // Numeric order without parsing: strip leading zeros, shorter is smaller.
    let key = |n: &Vec<u8>| -> (usize, Vec<u8>) {
        let s: Vec<u8> = n.iter().copied().skip_while(|&b| b == b'0').collect();
        (s.len(), s)
    };
    names.sort_by_cached_key(key);
    Ok(names
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect())
}

/// Read `/var/lib/dpkg/status` and the pending journal.
pub(super) fn read(guest: &Guest) -> DbRead {
    let data = match guest.read_capped(DPKG_STATUS, DPKG_READ_CAP) {
        Ok(Some(d)) => d,
        Ok(None) => return DbRead::failed(format!("{DPKG_STATUS} is not a regular file")),
        Err(e) => return DbRead::failed(format!("cannot read {DPKG_STATUS}: {e}")),
    };
    let mut db = Db::default();
    parse_into(&data, &mut db);
    drop(data);
    let mut warnings = Vec::new();
    match journal_files(guest) {
        Ok(files) if !files.is_empty() => {
            let mut applied = 0usize;
            let mut budget = DPKG_READ_CAP;
            for f in &files {
                let path = format!("{DPKG_UPDATES}/{f}");
                match guest.read_capped(&path, budget) {
                    Ok(Some(d)) => {
                        budget = budget.saturating_sub(d.len() as u64);
                        parse_into(&d, &mut db);
                        applied += 1;
                    }
                    Ok(None) => {}
                    Err(e) => warnings.push(format!("cannot read dpkg journal {path}: {e}")),
                }
            }
            if applied > 0 {
                warnings.push(format!(
                    "{DPKG_UPDATES} holds {applied} journal file(s) of an interrupted dpkg run; they were applied \
                     over {DPKG_STATUS} as dpkg would"
                ));
            }
        }
        Ok(_) => {}
        Err(e) => warnings.push(e),
    }
    DbRead {
        packages: db.into_installed(),
        error: None,
        warnings,
    }
}
