//! Escaping and the small formatting helpers every page shares. Every
//! string that reaches a page goes through [`esc`] (or [`log_text`] for
//! logs): names, reasons, logs and results come from vendors' scripts and
//! VMs and are untrusted.

use std::fmt::Write as _;

/// `text` safe inside an HTML element or a double- or single-quoted
/// attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A log or result as text safe in a `<pre>`: escaped, and every control
/// character except newline and tab shown in caret notation as `cat -v`
/// does (ESC as `^[`, so an ANSI colour sequence reads `^[[31m` instead of
/// driving anything; CR as `^M`, so a progress bar's redraws stay
/// readable; DEL as `^?`), and C1 controls and bidirectional overrides as
/// `\u{…}` (they could reorder what the operator reads). Plain ASCII, so
/// no font lacks a glyph for it.
pub fn log_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A path segment safe in a URL (the API's names and ids are
/// `[A-Za-z0-9_-]` already; this keeps a link right if that ever widens).
pub fn url_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A Unix time in milliseconds as UTC (`2026-12-07T12:00:00Z`).
pub fn time(ms: i64) -> String {
    ibkit_support::clock::format_utc_ms(ms)
}

/// An optional time, or a dash.
pub fn time_or_dash(ms: Option<i64>) -> String {
    ms.map_or_else(|| "–".to_string(), time)
}

/// How long ago `then` was, seen at `now` (`4s ago`, `3m 2s ago`).
pub fn age(then: i64, now: i64) -> String {
    let d = now.saturating_sub(then);
    if d < 0 {
        return "just now".to_string();
    }
    format!("{} ago", duration(d))
}

/// A duration in milliseconds, short (`850ms`, `12s`, `3m 2s`, `2h 5m`, `3d 4h`).
pub fn duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A byte count (`512 B`, `3.4 KiB`, `12.0 MiB`).
pub fn bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", f / 1024.0),
        _ => format!("{:.1} MiB", f / 1_048_576.0),
    }
}

/// A status word as a badge, coloured by what it means (the word itself is
/// one of the API's fixed enum spellings, escaped anyway).
pub fn badge(word: &str) -> String {
    let class = match word {
        "ok" | "running" | "healthy" | "resolved" | "paired" => "good",
        "failed" | "unhealthy" | "open" | "deleted" => "bad",
        "applying" | "pending" => "busy",
        _ => "plain",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn log_controls_become_visible_symbols() {
        let shown = log_text("\u{1b}[31mred\u{1b}[0m\r\n<b>\tok\u{7}\u{85}\u{202e}");
        assert_eq!(shown, "^[[31mred^[[0m^M\n&lt;b&gt;\tok^G\\u{85}\\u{202e}");
        assert!(!shown.contains('\u{1b}'));
    }

    #[test]
    fn url_segments_are_percent_encoded() {
        assert_eq!(url_segment("a-b_c"), "a-b_c");
        assert_eq!(url_segment("a/b c\"<"), "a%2Fb%20c%22%3C");
    }

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_000), "12s");
        assert_eq!(duration(182_000), "3m 2s");
        assert_eq!(duration(7_500_000), "2h 5m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(age(1_000, 5_000), "4s ago");
    }
}
