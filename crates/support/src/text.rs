//! Tails of logs and consoles, for error messages and evidence.

/// The last `n` non-blank lines of `text`, joined with `\n`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `max_bytes` of `text`, cut forward to a character boundary.
pub fn tail_bytes(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_skips_blank_lines() {
        assert_eq!(tail_lines("a\nb\n\n  \nc\n\n", 2), "b\nc");
        assert_eq!(tail_lines("only", 5), "only");
        assert_eq!(tail_lines("", 3), "");
    }

    #[test]
    fn tail_bytes_cuts_at_a_char_boundary() {
        assert_eq!(tail_bytes("abc", 10), "abc");
        assert_eq!(tail_bytes("abcdef", 3), "def");
        // "é" is two bytes: a cut inside it moves forward.
        assert_eq!(tail_bytes("xé", 1), "");
        assert_eq!(tail_bytes("xéz", 2), "z");
        assert_eq!(tail_bytes("xéz", 3), "éz");
    }
}
