//! Small text helpers: ANSI styles, escaping of untrusted strings, wrapping
//! and human-readable sizes and durations.

use std::borrow::Cow;
use std::fmt::Write as _;

/// An ANSI style (SGR parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Bold,
    Dim,
    BoldRed,
    BoldYellow,
    Magenta,
    Blue,
    Green,
}

impl Style {
    fn sgr(self) -> &'static str {
        match self {
            Style::Bold => "1",
            Style::Dim => "2",
            Style::BoldRed => "1;31",
            Style::BoldYellow => "1;33",
            Style::Magenta => "35",
            Style::Blue => "34",
            Style::Green => "32",
        }
    }
}

/// Whether to colour, and with which styles.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Painter {
    pub color: bool,
}

impl Painter {
    /// `s` in `style` when colouring, else `s` unchanged.
    pub fn paint(&self, style: Style, s: &str) -> String {
        if self.color && !s.is_empty() {
            format!("\x1b[{}m{s}\x1b[0m", style.sgr())
        } else {
            s.to_owned()
        }
    }
}

/// Characters that must not reach a terminal verbatim: C0/C1 controls, DEL,
/// and the Unicode bidirectional controls that can reorder what is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}')
}

/// `s` with unsafe characters written as visible escapes (`\e`, `\n`,
/// `\u{202e}`), so text from the image cannot move the cursor, change
/// colours or reorder the line.
pub(crate) fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x1b' => out.push_str("\\e"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Number of terminal columns `s` takes, approximately (one per char).
pub(crate) fn width(s: &str) -> usize {
    s.chars().count()
}

/// Word-wrap `text` to `max` columns. The first line starts with `first`
/// (already counted in the width), later lines with `indent` spaces. Words
/// longer than a line (paths) are kept whole.
pub(crate) fn wrap(
    text: &str,
    max: usize,
    first: &str,
    first_width: usize,
    indent: usize,
) -> String {
    let mut out = String::from(first);
    let mut col = first_width;
    let mut line_start = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let w = width(word);
        if !line_start && col + 1 + w > max {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent));
            col = indent;
            line_start = true;
        }
        if !line_start {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += w;
        line_start = false;
    }
    out
}

/// `n` bytes as `10.0 GiB`, `512 MiB`, `4 KiB` or `300 B`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in milliseconds as `850 ms` or `1.42 s`.
pub(crate) fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// `n` and `word`, with a plural `s` unless `n == 1`.
pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_escapes_controls() {
        assert_eq!(clean("/root/.bash_history"), "/root/.bash_history");
        assert_eq!(clean("a\x1b[31mb\nc\u{202e}d"), "a\\e[31mb\\nc\\u{202e}d");
    }

    #[test]
    fn wrap_keeps_long_words_and_indents() {
        let s = wrap("aaa bbb ccc ddd", 10, "> ", 2, 4);
        assert_eq!(s, "> aaa bbb\n    ccc\n    ddd");
        let s = wrap("averyveryverylongword x", 10, "", 0, 2);
        assert_eq!(s, "averyveryverylongword\n  x");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(300), "300 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(10 * 1024 * 1024 * 1024), "10 GiB");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(millis(850), "850 ms");
        assert_eq!(millis(1420), "1.42 s");
    }
}
