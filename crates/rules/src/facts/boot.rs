//! Boot configuration: every place a kernel command line is written
//! (`/etc/default/grub` and `grub.d`, `grub.cfg` entries, BLS entries with
//! `grubenv`'s `kernelopts`, `/etc/kernel/cmdline`, extlinux), and which of
//! them decides what actually boots.

use std::collections::BTreeMap;

use crate::context::Context;

/// Where a command line comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A `linux` line of a `grub.cfg` menu entry (index in file order).
    GrubEntry {
        /// Entry title.
        title: String,
        /// 0-based index among top-level entries (submenu entries follow).
        index: usize,
    },
    /// A Boot Loader Specification entry's `options`.
    Bls,
    /// `GRUB_CMDLINE_LINUX` + `GRUB_CMDLINE_LINUX_DEFAULT` from
    /// `/etc/default/grub` (and `grub.d/*.cfg`): what the next `update-grub`
    /// or `grub2-mkconfig` writes.
    GrubDefaults,
    /// `/etc/kernel/cmdline` (UKI / kernel-install).
    KernelCmdline,
    /// An extlinux/syslinux `LABEL` (its `APPEND`, or the global one), or
    /// an old-syntax `DEFAULT kernel args` line (label empty).
    Extlinux {
        /// The label's name.
        label: String,
    },
}

/// One kernel command line found in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmdline {
    /// Where.
    pub kind: SourceKind,
    /// Guest path.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// The arguments (variables expanded where we can).
    pub args: String,
    /// The kernel image it boots, as written (`/boot/vmlinuz-6.1.0-13-amd64`),
    /// when the entry names one.
    pub kernel: Option<String>,
}

impl Cmdline {
    /// `path:line` for evidence.
    pub fn location(&self) -> String {
        format!("{}:{}", self.path, self.line)
    }
}

/// All command lines, and which one boots.
#[derive(Clone, Debug, Default)]
pub struct BootConfig {
    /// Everything found.
    pub cmdlines: Vec<Cmdline>,
    /// Index in `cmdlines` of the entry the boot loader starts by default.
    pub default_entry: Option<usize>,
    /// Index of the generator defaults (`/etc/default/grub`).
    pub grub_defaults: Option<usize>,
}

impl BootConfig {
    /// The command line that boots, falling back to the generator defaults
    /// and `/etc/kernel/cmdline` when no boot menu exists.
    pub fn effective(&self) -> Option<&Cmdline> {
        self.default_entry
            .or(self.grub_defaults)
            .and_then(|i| self.cmdlines.get(i))
            .or_else(|| {
                self.cmdlines
                    .iter()
                    .find(|c| c.kind == SourceKind::KernelCmdline)
            })
            .or_else(|| self.cmdlines.first())
    }
}

/// Split a command line into arguments, honouring double quotes.
pub fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in args.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `console=` values in order.
pub fn consoles(args: &str) -> Vec<String> {
    split_args(args)
        .into_iter()
        .filter_map(|a| a.strip_prefix("console=").map(str::to_owned))
        .collect()
}

/// The value of the last `key=` argument.
pub fn arg_value(args: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    split_args(args)
        .into_iter()
        .filter_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        .next_back()
}

/// Shell-ish assignments of a `/etc/default/grub`-style file, expanding
/// `$VAR` and `${VAR}` from earlier assignments.
fn shell_assignments(
    text: &str,
    vars: &mut BTreeMap<String, (String, usize)>,
    line_of: &mut BTreeMap<String, usize>,
) {
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || k.is_empty() {
            continue;
        }
        let v = v.trim();
        let v = if let Some(inner) = v
            .strip_prefix('"')
            .and_then(|s| s.rsplit_once('"').map(|(a, _)| a))
        {
            expand(inner, vars)
        } else if let Some(inner) = v
            .strip_prefix('\'')
            .and_then(|s| s.rsplit_once('\'').map(|(a, _)| a))
        {
            inner.to_owned()
        } else {
            expand(v.split_whitespace().next().unwrap_or(""), vars)
        };
        vars.insert(k.to_owned(), (v, i + 1));
        line_of.insert(k.to_owned(), i + 1);
    }
}

fn expand(s: &str, vars: &BTreeMap<String, (String, usize)>) -> String {
    let mut out = String::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '$' {
            let (name, next) = if b.get(i + 1) == Some(&'{') {
                let end = b[i + 2..].iter().position(|&c| c == '}').map(|p| i + 2 + p);
                match end {
                    Some(e) => (b[i + 2..e].iter().collect::<String>(), e + 1),
                    None => (String::new(), i + 1),
                }
            } else {
                let end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                    .map(|p| i + 1 + p)
                    .unwrap_or(b.len());
                (b[i + 1..end].iter().collect::<String>(), end)
            };
            if name.is_empty() {
                out.push('$');
                i += 1;
            } else {
                if let Some((v, _)) = vars.get(&name) {
                    out.push_str(v);
                }
                i = next;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// grub.cfg: `linux` lines of menu entries, and the default selection.
fn parse_grub_cfg(path: &str, text: &str, out: &mut Vec<Cmdline>) -> Option<usize> {
    let mut default_sel: Option<String> = None;
    let mut depth = 0usize;
    let mut titles: Vec<(usize, String)> = Vec::new();
    let mut top_index = 0usize;
    let mut first_of_top: BTreeMap<usize, usize> = BTreeMap::new();
    let mut current_top: Option<usize> = None;
    let start = out.len();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(v) = line.strip_prefix("set default=") {
            default_sel = Some(v.trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
        if line.starts_with("menuentry ") || line.starts_with("submenu ") {
            let title = line.split(['\'', '"']).nth(1).unwrap_or("").to_owned();
            if depth == 0 {
                current_top = Some(top_index);
                top_index += 1;
            }
            titles.push((depth, title));
        }
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "linux" | "linuxefi" | "linux16") {
            let rest = line[first.len()..].trim();
            let mut parts = rest.splitn(2, char::is_whitespace);
            let kernel = parts.next().map(str::to_owned);
            let args = parts.next().unwrap_or("").trim().to_owned();
            let title = titles.last().map(|(_, t)| t.clone()).unwrap_or_default();
            let index = current_top.unwrap_or(0);
            out.push(Cmdline {
                kind: SourceKind::GrubEntry { title, index },
                path: path.to_owned(),
                line: i + 1,
                args,
                kernel,
            });
            first_of_top.entry(index).or_insert(out.len() - 1);
        }
        depth = (depth + opens).saturating_sub(closes);
        while titles.last().is_some_and(|(d, _)| *d >= depth) && closes > 0 {
            titles.pop();
            if titles.is_empty() {
                break;
            }
        }
    }
    if out.len() == start {
        return None;
    }
    // `set default=N` picks a top-level entry by index; a title or a saved
    // entry we cannot evaluate falls back to the first entry, as GRUB does
    // when the saved entry is missing.
    let idx = default_sel
        .as_deref()
        .and_then(|d| d.split('>').next())
        .and_then(|d| d.parse::<usize>().ok())
        .unwrap_or(0);
    first_of_top.get(&idx).copied().or(Some(start))
}

fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// extlinux/syslinux configuration files, in the order the loaders look.
const EXTLINUX_CONFIGS: &[&str] = &[
    "/boot/extlinux/extlinux.conf",
    "/boot/extlinux.conf",
    "/boot/syslinux/syslinux.cfg",
    "/boot/syslinux/extlinux.conf",
    "/syslinux/syslinux.cfg",
    "/extlinux.conf",
];

/// One `LABEL` block of an extlinux/syslinux file.
#[derive(Default)]
struct SysLabel {
    name: String,
    line: usize,
    kernel: Option<String>,
    initrd: Option<String>,
    append: Option<(String, usize)>,
}

/// Split `KEYWORD rest` (syslinux keywords are case-insensitive).
fn syslinux_keyword(line: &str) -> (String, &str) {
    let mut it = line.splitn(2, char::is_whitespace);
    let k = it.next().unwrap_or("").to_ascii_lowercase();
    (k, it.next().unwrap_or("").trim())
}

/// extlinux/syslinux: one command line per `LABEL`, and the index of the one
/// that boots. That is the label named by `ONTIMEOUT`, else `MENU DEFAULT`,
/// else `DEFAULT`, else the first label; a `DEFAULT` that names no label is
/// the old syntax `DEFAULT kernel args` and boots that kernel. A label
/// without `APPEND` takes the global one (`APPEND -` means none).
fn parse_extlinux(path: &str, text: &str) -> (Vec<Cmdline>, Option<usize>) {
    let mut labels: Vec<SysLabel> = Vec::new();
    let mut global_append: Option<(String, usize)> = None;
    let mut default: Option<(String, usize)> = None;
    let mut ontimeout: Option<String> = None;
    let mut menu_default: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = syslinux_keyword(line);
        match key.as_str() {
            "label" => labels.push(SysLabel {
                name: rest.to_owned(),
                line: i + 1,
                ..SysLabel::default()
            }),
            "default" => {
                default = Some((rest.to_owned(), i + 1));
            }
            "ontimeout" => ontimeout = Some(rest.to_owned()),
            "menu" => {
                let (sub, _) = syslinux_keyword(rest);
                if sub == "default"
                    && let Some(l) = labels.last()
                {
                    menu_default = Some(l.name.clone());
                }
            }
            "append" => match labels.last_mut() {
                Some(l) => l.append = Some((rest.to_owned(), i + 1)),
                None => global_append = Some((rest.to_owned(), i + 1)),
            },
            "kernel" | "linux" => {
                if let Some(l) = labels.last_mut() {
                    l.kernel = rest.split_whitespace().next().map(str::to_owned);
                }
            }
            "initrd" => {
                if let Some(l) = labels.last_mut() {
                    l.initrd = Some(rest.to_owned());
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<Cmdline> = labels
        .iter()
        .map(|l| {
            let (args, line) = match (&l.append, &global_append) {
                (Some((a, n)), _) if a == "-" => (String::new(), *n),
                (Some((a, n)), _) => (a.clone(), *n),
                (None, Some((a, n))) => (a.clone(), *n),
                (None, None) => (String::new(), l.line),
            };
            // `INITRD` is passed to the kernel as `initrd=`, ahead of APPEND.
            let args = match &l.initrd {
                Some(i) if arg_value(&args, "initrd").is_none() => {
                    format!("initrd={i} {args}").trim().to_owned()
                }
                _ => args,
            };
            Cmdline {
                kind: SourceKind::Extlinux {
                    label: l.name.clone(),
                },
                path: path.to_owned(),
                line,
                args,
                kernel: l.kernel.clone(),
            }
        })
        .collect();
    let find = |name: &str| labels.iter().position(|l| l.name == name);
    // The first word of DEFAULT/ONTIMEOUT is a label or a kernel; the rest
    // is typed after it, i.e. appended to the command line.
    let chosen = ontimeout
        .as_deref()
        .or(menu_default.as_deref())
        .map(|s| (s.to_owned(), None))
        .or_else(|| default.clone().map(|(s, l)| (s, Some(l))));
    let Some((sel, default_line)) = chosen else {
        let d = (!out.is_empty()).then_some(0);
        return (out, d);
    };
    let mut words = sel.splitn(2, char::is_whitespace);
    let first = words.next().unwrap_or("");
    let extra = words.next().unwrap_or("").trim();
    if let Some(i) = find(first) {
        if !extra.is_empty() {
            out[i].args = format!("{} {extra}", out[i].args).trim().to_owned();
        }
        return (out, Some(i));
    }
    if first.is_empty() {
        let d = (!out.is_empty()).then_some(0);
        return (out, d);
    }
    // Old syntax: DEFAULT names a kernel; the global APPEND applies.
    let global = global_append.map(|(a, _)| a).unwrap_or_default();
    out.push(Cmdline {
        kind: SourceKind::Extlinux {
            label: String::new(),
        },
        path: path.to_owned(),
        line: default_line.unwrap_or(1),
        args: format!("{global} {extra}").trim().to_owned(),
        kernel: Some(first.to_owned()),
    });
    let d = out.len() - 1;
    (out, Some(d))
}

/// Load the boot configuration.
pub fn load(cx: &Context) -> BootConfig {
    let mut bc = BootConfig::default();

    // Generator defaults.
    let mut vars = BTreeMap::new();
    let mut line_of = BTreeMap::new();
    let mut defaults_path = None;
    if let Some(text) = cx.read_text("/etc/default/grub") {
        shell_assignments(&text, &mut vars, &mut line_of);
        defaults_path = Some("/etc/default/grub".to_owned());
    }
    let mut last_file_for: BTreeMap<String, String> = BTreeMap::new();
    for k in line_of.keys() {
        last_file_for.insert(k.clone(), "/etc/default/grub".into());
    }
    for e in cx.list_dir("/etc/default/grub.d") {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        if !name.ends_with(".cfg") {
            continue;
        }
        let p = format!("/etc/default/grub.d/{name}");
        if let Some(text) = cx.read_text(&p) {
            let mut lines = BTreeMap::new();
            shell_assignments(&text, &mut vars, &mut lines);
            for (k, l) in lines {
                line_of.insert(k.clone(), l);
                last_file_for.insert(k, p.clone());
            }
            defaults_path.get_or_insert(p);
        }
    }
    if defaults_path.is_some()
        && (vars.contains_key("GRUB_CMDLINE_LINUX")
            || vars.contains_key("GRUB_CMDLINE_LINUX_DEFAULT"))
    {
        let linux = vars
            .get("GRUB_CMDLINE_LINUX")
            .map(|v| v.0.clone())
            .unwrap_or_default();
        let dflt = vars
            .get("GRUB_CMDLINE_LINUX_DEFAULT")
            .map(|v| v.0.clone())
            .unwrap_or_default();
        // Evidence points at the file and line that set the value that
        // matters most: the last assignment of either variable.
        let key = if line_of.contains_key("GRUB_CMDLINE_LINUX_DEFAULT")
            && last_file_for.get("GRUB_CMDLINE_LINUX_DEFAULT")
                != Some(&"/etc/default/grub".to_string())
        {
            "GRUB_CMDLINE_LINUX_DEFAULT"
        } else if line_of.contains_key("GRUB_CMDLINE_LINUX") {
            "GRUB_CMDLINE_LINUX"
        } else {
            "GRUB_CMDLINE_LINUX_DEFAULT"
        };
        bc.cmdlines.push(Cmdline {
            kind: SourceKind::GrubDefaults,
            path: last_file_for
                .get(key)
                .cloned()
                .unwrap_or_else(|| "/etc/default/grub".into()),
            line: line_of.get(key).copied().unwrap_or(0),
            args: format!("{linux} {dflt}").trim().to_owned(),
            kernel: None,
        });
        bc.grub_defaults = Some(bc.cmdlines.len() - 1);
    }

    // grub.cfg: the first one with menu entries decides.
    let mut cfgs = vec![
        "/boot/grub/grub.cfg".to_owned(),
        "/boot/grub2/grub.cfg".to_owned(),
    ];
    for e in cx.list_dir("/boot/efi/EFI") {
        let vendor = String::from_utf8_lossy(&e.name).into_owned();
        cfgs.push(format!("/boot/efi/EFI/{vendor}/grub.cfg"));
    }
    let mut uses_bls = false;
    for cfg in &cfgs {
        let Some(text) = cx.read_text(cfg) else {
            continue;
        };
        if text
            .lines()
            .any(|l| l.trim() == "blscfg" || l.trim().starts_with("blscfg "))
        {
            uses_bls = true;
        }
        if let Some(def) = parse_grub_cfg(cfg, &text, &mut bc.cmdlines)
            && bc.default_entry.is_none()
        {
            bc.default_entry = Some(def);
        }
    }

    // BLS entries (RHEL 8+/Fedora), with $kernelopts from grubenv.
    let mut kernelopts = None;
    for env in [
        "/boot/grub2/grubenv",
        "/boot/grub/grubenv",
        "/boot/efi/EFI/redhat/grubenv",
    ] {
        if let Some(text) = cx.read_text(env) {
            for l in text.lines() {
                if let Some(v) = l.strip_prefix("kernelopts=") {
                    kernelopts = Some(v.to_owned());
                }
            }
        }
    }
    let mut bls: Vec<(String, Cmdline)> = Vec::new();
    for e in cx.list_dir("/boot/loader/entries") {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        if !name.ends_with(".conf") {
            continue;
        }
        let p = format!("/boot/loader/entries/{name}");
        let Some(text) = cx.read_text(&p) else {
            continue;
        };
        let mut version = name.clone();
        let mut opts = None;
        let mut kernel = None;
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if let Some(v) = l.strip_prefix("linux") {
                kernel = v.split_whitespace().next().map(str::to_owned);
            }
            if let Some(v) = l.strip_prefix("version") {
                version = v.trim().to_owned();
            }
            if let Some(v) = l.strip_prefix("options") {
                let v = v
                    .trim()
                    .replace("$kernelopts", kernelopts.as_deref().unwrap_or(""));
                opts = Some((v, i + 1));
            }
        }
        if let Some((args, line)) = opts {
            bls.push((
                version,
                Cmdline {
                    kind: SourceKind::Bls,
                    path: p,
                    line,
                    args,
                    kernel: kernel.clone(),
                },
            ));
        }
    }
    // blscfg boots the newest entry (entries sort by version, descending).
    bls.sort_by_key(|b| std::cmp::Reverse(version_key(&b.0)));
    let first_bls = bc.cmdlines.len();
    let has_bls = !bls.is_empty();
    bc.cmdlines.extend(bls.into_iter().map(|(_, c)| c));
    if has_bls && (uses_bls || bc.default_entry.is_none()) {
        bc.default_entry = Some(first_bls);
    }

    if let Some(text) = cx.read_text("/etc/kernel/cmdline") {
        bc.cmdlines.push(Cmdline {
            kind: SourceKind::KernelCmdline,
            path: "/etc/kernel/cmdline".into(),
            line: 1,
            args: text.trim().to_owned(),
            kernel: None,
        });
    }
    for p in EXTLINUX_CONFIGS {
        if let Some(text) = cx.read_text(p) {
            let (entries, default) = parse_extlinux(p, &text);
            let first = bc.cmdlines.len();
            bc.cmdlines.extend(entries);
            if let Some(d) = default
                && bc.default_entry.is_none()
            {
                bc.default_entry = Some(first + d);
            }
        }
    }
    bc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consoles_in_order() {
        assert_eq!(
            consoles("ro console=tty0 quiet console=ttyS0,115200"),
            vec!["tty0", "ttyS0,115200"]
        );
        assert_eq!(arg_value("a=1 b=2 a=3", "a").as_deref(), Some("3"));
    }

    #[test]
    fn grub_defaults_expand() {
        let mut vars = BTreeMap::new();
        let mut lines = BTreeMap::new();
        shell_assignments(
            "GRUB_CMDLINE_LINUX=\"console=tty0\"\nGRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX console=ttyS0\"\n",
            &mut vars,
            &mut lines,
        );
        assert_eq!(vars["GRUB_CMDLINE_LINUX"].0, "console=tty0 console=ttyS0");
        assert_eq!(lines["GRUB_CMDLINE_LINUX"], 2);
    }

    #[test]
    fn grub_cfg_default_entry() {
        let cfg = "set default=\"1\"\nmenuentry 'A' {\n  linux /vmlinuz-a root=x console=tty0\n}\nsubmenu 'Adv' {\n menuentry 'B' {\n  linux /vmlinuz-b root=x console=ttyS0\n }\n}\n";
        let mut out = Vec::new();
        let d = parse_grub_cfg("/boot/grub/grub.cfg", cfg, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(d, Some(1));
        assert_eq!(out[1].line, 7);
    }

    #[test]
    fn extlinux_default_label_boots() {
        let cfg = "DEFAULT debian\nLABEL rescue\n LINUX /vmlinuz-r\n APPEND ro single console=ttyS0\nlabel debian\n linux /vmlinuz-d\n initrd /initrd.img-d\n append root=/dev/sda1 ro console=tty0\n";
        let (out, d) = parse_extlinux("/boot/extlinux/extlinux.conf", cfg);
        let d = d.expect("default");
        assert_eq!(out.len(), 2);
        assert_eq!(out[d].line, 8);
        assert_eq!(out[d].kernel.as_deref(), Some("/vmlinuz-d"));
        assert_eq!(consoles(&out[d].args), vec!["tty0"]);
        assert_eq!(
            arg_value(&out[d].args, "initrd").as_deref(),
            Some("/initrd.img-d")
        );
    }

    #[test]
    fn extlinux_old_default_kernel_and_ontimeout() {
        let (out, d) = parse_extlinux(
            "/extlinux.conf",
            "APPEND console=ttyS0\nDEFAULT /vmlinuz ro quiet\n",
        );
        let c = &out[d.expect("default")];
        assert_eq!(c.kernel.as_deref(), Some("/vmlinuz"));
        assert_eq!(c.args, "console=ttyS0 ro quiet");
        assert_eq!(c.line, 2);
        let (out, d) = parse_extlinux(
            "/extlinux.conf",
            "DEFAULT a\nONTIMEOUT b\nLABEL a\nAPPEND x\nLABEL b\nAPPEND -\n",
        );
        assert_eq!(out[d.expect("default")].args, "");
        assert_eq!(out[1].line, 6);
    }
}
