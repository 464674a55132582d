//! systemd units: where each unit file is, which are masked, and which are
//! pulled in when the system boots to its default target (through
//! `.wants/`/`.requires/` symlinks and `Wants=`/`Requires=` in unit files and
//! drop-ins), recorded with the chain that pulls each one in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ibkit_image::fs::FileKind;

use crate::context::Context;

/// Unit directories, highest priority first. `/run` is empty in an image.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Most units followed from the default target.
const MAX_UNITS: usize = 20_000;

/// A parsed unit file (or drop-in).
#[derive(Clone, Debug, Default)]
pub struct UnitFile {
    /// Guest path of the file (after following an alias symlink).
    pub path: String,
    /// `(section, key, value, line)` in file order.
    pub entries: Vec<(String, String, String, usize)>,
}

impl UnitFile {
    /// Parse unit-file text.
    pub fn parse(path: &str, text: &str) -> UnitFile {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending: Option<(String, String, usize)> = None;
        for (i, raw) in text.lines().enumerate() {
            if let Some((k, mut v, l)) = pending.take() {
                // Continuation of the previous line.
                let cont = raw.trim_end();
                if let Some(stripped) = cont.strip_suffix('\\') {
                    v.push(' ');
                    v.push_str(stripped.trim());
                    pending = Some((k, v, l));
                } else {
                    v.push(' ');
                    v.push_str(cont.trim());
                    entries.push((section.clone(), k, v, l));
                }
                continue;
            }
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = line[1..line.len() - 1].to_owned();
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let k = k.trim().to_owned();
                let v = v.trim();
                if let Some(stripped) = v.strip_suffix('\\') {
                    pending = Some((k, stripped.trim().to_owned(), i + 1));
                } else {
                    entries.push((section.clone(), k, v.to_owned(), i + 1));
                }
            }
        }
        if let Some((k, v, l)) = pending {
            entries.push((section, k, v, l));
        }
        UnitFile {
            path: path.to_owned(),
            entries,
        }
    }

    /// Values of `key` in `section`, with line numbers; an empty assignment
    /// resets the list, as systemd does.
    pub fn values(&self, section: &str, key: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (s, k, v, l) in &self.entries {
            if s == section && k == key {
                if v.is_empty() {
                    out.clear();
                } else {
                    out.push((v.clone(), *l));
                }
            }
        }
        out
    }

    /// The last value of `key` in `section`.
    pub fn value(&self, section: &str, key: &str) -> Option<String> {
        self.values(section, key).pop().map(|(v, _)| v)
    }
}

/// Why a unit is pulled in at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    /// The unit that pulls it.
    pub by: String,
    /// How: the symlink or the file and line.
    pub how: String,
}

/// The unit graph.
#[derive(Clone, Debug, Default)]
pub struct Units {
    /// The default target (`multi-user.target` ...), after aliases.
    pub default_target: Option<String>,
    /// Where the default target was set.
    pub default_target_source: Option<String>,
    /// Units reachable from the default target, with what pulled them.
    pub reachable: BTreeMap<String, Pull>,
    /// Masked units and the mask path.
    pub masked: BTreeMap<String, String>,
    /// Unit files by unit name (as named, aliases included), loaded lazily
    /// during the walk; use [`Units::file`].
    pub files: BTreeMap<String, UnitFile>,
    /// Entries in each unit directory: name → (dir, kind).
    index: BTreeMap<String, Vec<(String, FileKind)>>,
    /// True if no unit directory exists at all (not a systemd system).
    pub no_systemd: bool,
}

impl Units {
    /// True if the unit is pulled in at boot (and not masked).
    pub fn is_enabled(&self, unit: &str) -> bool {
        self.reachable.contains_key(unit) && !self.masked.contains_key(unit)
    }

    /// The chain of units from the default target to `unit`, with how each
    /// link is made (`multi-user.target.wants/ssh.service`).
    pub fn chain(&self, unit: &str) -> Vec<(String, Pull)> {
        let mut out = Vec::new();
        let mut cur = unit.to_owned();
        while let Some(p) = self.reachable.get(&cur) {
            out.push((cur.clone(), p.clone()));
            if p.by.is_empty() || out.len() > 64 {
                break;
            }
            cur = p.by.clone();
        }
        out
    }

    /// A one-line explanation of why `unit` starts at boot.
    pub fn explain(&self, unit: &str) -> Option<String> {
        let p = self.reachable.get(unit)?;
        Some(if p.by.is_empty() {
            p.how.clone()
        } else {
            format!("{} (pulled in by {})", p.how, p.by)
        })
    }

    /// The unit file for `unit`, if it was loaded.
    pub fn file(&self, unit: &str) -> Option<&UnitFile> {
        self.files.get(unit)
    }

    /// True if some unit directory has a file or link named `unit`.
    pub fn exists(&self, unit: &str) -> bool {
        self.index.contains_key(unit)
            || template_of(unit).is_some_and(|t| self.index.contains_key(&t))
    }

    /// Names of every unit pulled in at boot.
    pub fn enabled(&self) -> impl Iterator<Item = &str> {
        self.reachable
            .keys()
            .filter(|u| !self.masked.contains_key(*u))
            .map(String::as_str)
    }
}

/// `getty@tty1.service` → `getty@.service`.
pub fn template_of(unit: &str) -> Option<String> {
    let (base, suffix) = unit.rsplit_once('.')?;
    let (prefix, instance) = base.split_once('@')?;
    (!instance.is_empty()).then(|| format!("{prefix}@.{suffix}"))
}

fn basename(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    s.rsplit('/').next().unwrap_or("").to_owned()
}

/// Build the unit graph.
pub fn load(cx: &Context) -> Units {
    let mut u = Units::default();
    // Index the unit directories once: a .wants lookup is then a map hit.
    let mut seen_dirs = BTreeSet::new();
    for dir in UNIT_DIRS {
        let Ok(r) = cx.guest.resolve(dir, true) else {
            continue;
        };
        if r.meta.is_none() || !seen_dirs.insert(r.path.clone()) {
            continue; // /lib -> /usr/lib: the same directory twice
        }
        for e in cx.list_dir(dir) {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            u.index
                .entry(name)
                .or_default()
                .push(((*dir).to_owned(), e.kind));
        }
    }
    if u.index.is_empty() {
        u.no_systemd = true;
        return u;
    }

    // Default target.
    for dir in UNIT_DIRS {
        let p = format!("{dir}/default.target");
        match cx.guest.read_link(&p) {
            Ok(Some(target)) => {
                u.default_target = Some(basename(&target));
                u.default_target_source =
                    Some(format!("{p} -> {}", String::from_utf8_lossy(&target)));
                break;
            }
            Ok(None) if cx.guest.exists(&p) => {
                u.default_target = Some("default.target".into());
                u.default_target_source = Some(p);
                break;
            }
            _ => {}
        }
    }
    let Some(default) = u.default_target.clone() else {
        return u;
    };

    let mut queue = VecDeque::new();
    u.reachable.insert(
        default.clone(),
        Pull {
            by: String::new(),
            how: format!(
                "default target ({})",
                u.default_target_source.clone().unwrap_or_default()
            ),
        },
    );
    queue.push_back(default);
    while let Some(unit) = queue.pop_front() {
        if u.reachable.len() > MAX_UNITS {
            cx.note(format!(
                "more than {MAX_UNITS} units pulled in at boot; stopped following"
            ));
            break;
        }
        let mut deps: Vec<(String, String)> = Vec::new();
        let names = unit_names(cx, &mut u, &unit);
        for name in &names {
            // .wants/ and .requires/ directories in every unit dir.
            for suffix in [".wants", ".requires"] {
                let dname = format!("{name}{suffix}");
                let Some(places) = u.index.get(&dname).cloned() else {
                    continue;
                };
                for (dir, _) in places {
                    let full = format!("{dir}/{dname}");
                    for e in cx.list_dir(&full) {
                        let dep = String::from_utf8_lossy(&e.name).into_owned();
                        deps.push((dep.clone(), format!("{full}/{dep}")));
                    }
                }
            }
        }
        // Wants=/Requires= in the unit file and its drop-ins.
        for name in &names {
            let Some(file) = u.files.get(name).cloned() else {
                continue;
            };
            for key in ["Wants", "Requires", "Requisite", "BindsTo", "Upholds"] {
                for (v, line) in file.values("Unit", key) {
                    for dep in v.split_whitespace() {
                        deps.push((dep.to_owned(), format!("{key}= in {}:{line}", file.path)));
                    }
                }
            }
        }
        for (dep, how) in deps {
            if u.masked.contains_key(&dep) {
                continue;
            }
            if !u.reachable.contains_key(&dep) {
                u.reachable.insert(
                    dep.clone(),
                    Pull {
                        by: unit.clone(),
                        how,
                    },
                );
                queue.push_back(dep);
            }
        }
    }
    u
}

/// Load `unit`'s file (following alias symlinks and templates) and drop-ins;
/// returns the names its dependencies may be recorded under (itself, the
/// alias target, the template).
fn unit_names(cx: &Context, u: &mut Units, unit: &str) -> Vec<String> {
    let mut names = vec![unit.to_owned()];
    if let Some(t) = template_of(unit) {
        names.push(t);
    }
    // First unit dir holding the name (or its template) wins.
    let mut found: Option<String> = None;
    for name in names.clone() {
        if let Some(places) = u.index.get(&name)
            && let Some((dir, _)) = places.first()
        {
            found = Some(format!("{dir}/{name}"));
            break;
        }
    }
    let Some(path) = found else { return names };
    let resolved = cx.guest.resolve(&path, true).ok();
    match resolved {
        Some(r) if r.path == b"/dev/null" => {
            u.masked.insert(unit.to_owned(), path);
            return names;
        }
        Some(r) if r.meta.is_some() => {
            let real = String::from_utf8_lossy(&r.path).into_owned();
            let real_name = basename(&r.path);
            if real_name != unit && !names.contains(&real_name) {
                names.push(real_name);
            }
            let mut file = match cx.read_text(&real) {
                Some(text) => UnitFile::parse(&real, &text),
                None => UnitFile::default(),
            };
            // Drop-ins: <name>.d/*.conf in every unit dir.
            for name in names.clone() {
                let dname = format!("{name}.d");
                let Some(places) = u.index.get(&dname).cloned() else {
                    continue;
                };
                for (dir, _) in places {
                    let d = format!("{dir}/{dname}");
                    for e in cx.list_dir(&d) {
                        let n = String::from_utf8_lossy(&e.name).into_owned();
                        if n.ends_with(".conf") {
                            let p = format!("{d}/{n}");
                            if let Some(text) = cx.read_text(&p) {
                                let drop = UnitFile::parse(&p, &text);
                                file.entries.extend(drop.entries);
                            }
                        }
                    }
                }
            }
            for name in &names {
                u.files.entry(name.clone()).or_insert_with(|| file.clone());
            }
        }
        _ => {}
    }
    names
}

/// A `ConditionPathExists=` of a unit that does not hold in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmetCondition {
    /// The path the condition tests.
    pub path: String,
    /// True for `!path` (the unit starts only if the path is absent).
    pub negated: bool,
    /// The unit file (or drop-in) and line that set it.
    pub source: String,
}

/// Paths that exist only at run time (tmpfs, kernel filesystems): an image
/// cannot say whether a condition on them holds.
fn runtime_path(p: &str) -> bool {
    ["/run/", "/proc/", "/sys/", "/dev/", "/tmp/"]
        .iter()
        .any(|d| p.starts_with(d))
}

/// The `ConditionPathExists=` checks of `file` that fail on the image's
/// files, as systemd would evaluate them at boot. Non-triggering conditions
/// must all hold; of the triggering ones (`|` prefix) at least one must. A
/// condition on a run-time path or with a specifier (`%`) is not judged.
pub fn unmet_path_conditions(cx: &Context, file: &UnitFile) -> Vec<UnmetCondition> {
    let mut unmet = Vec::new();
    let mut triggering: Vec<UnmetCondition> = Vec::new();
    let mut trigger_held = false;
    for (v, line) in file.values("Unit", "ConditionPathExists") {
        let (trigger, rest) = match v.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, v.as_str()),
        };
        let (negated, path) = match rest.strip_prefix('!') {
            Some(p) => (true, p.trim()),
            None => (false, rest.trim()),
        };
        if !path.starts_with('/') || path.contains('%') || runtime_path(path) {
            if trigger {
                trigger_held = true; // unknown: assume it may hold
            }
            continue;
        }
        let holds = cx.guest.exists(path) != negated;
        let c = UnmetCondition {
            path: path.to_owned(),
            negated,
            source: format!("{}:{line}", file.path),
        };
        match (trigger, holds) {
            (true, true) => trigger_held = true,
            (true, false) => triggering.push(c),
            (false, false) => unmet.push(c),
            (false, true) => {}
        }
    }
    if !trigger_held {
        unmet.extend(triggering);
    }
    unmet
}

/// Look up (and load) a unit's file outside the boot walk, e.g. a declared
/// app unit that nothing pulls in.
pub fn load_unit_file(cx: &Context, unit: &str) -> Option<UnitFile> {
    if let Some(f) = cx.units().file(unit) {
        return Some(f.clone());
    }
    let mut names = vec![unit.to_owned()];
    if let Some(t) = template_of(unit) {
        names.push(t);
    }
    for dir in UNIT_DIRS {
        for name in &names {
            let p = format!("{dir}/{name}");
            if let Ok(r) = cx.guest.resolve(&p, true) {
                if r.path == b"/dev/null" {
                    return None;
                }
                if r.meta.is_some_and(|m| m.kind == FileKind::File) {
                    let real = String::from_utf8_lossy(&r.path).into_owned();
                    let text = cx.read_text(&real)?;
                    return Some(UnitFile::parse(&real, &text));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let f = UnitFile::parse(
            "/x.service",
            "[Unit]\nWants=a.service b.service\nWants=\nWants=c.service\n[Service]\nExecStart=/bin/x \\\n  --flag\n",
        );
        assert_eq!(
            f.values("Unit", "Wants"),
            vec![("c.service".to_string(), 4)]
        );
        assert_eq!(
            f.value("Service", "ExecStart").as_deref(),
            Some("/bin/x --flag")
        );
    }

    #[test]
    fn templates() {
        assert_eq!(
            template_of("getty@tty1.service").as_deref(),
            Some("getty@.service")
        );
        assert_eq!(template_of("getty@.service"), None);
        assert_eq!(template_of("ssh.service"), None);
    }
}
