//! Paging a step log: a log can be many MiB, so the log page shows one
//! [`PAGE_BYTES`] window at a time, read from the database as a byte range
//! (the service never loads the whole log for one page).

/// Bytes of log on one page.
pub const PAGE_BYTES: u64 = 256 << 10;

/// The longest UTF-8 sequence minus one: a page reads this much past its
/// end so that a character cut by the boundary is finished on it.
pub const OVERLAP_BYTES: u64 = 3;

/// Pages of a log of `total` bytes (an empty log has one, empty, page).
pub fn pages(total: u64) -> u64 {
    total.div_ceil(PAGE_BYTES).max(1)
}

/// The byte range to read for page `page` (from 1): (offset, length), the
/// length including [`OVERLAP_BYTES`]; a read past the log's end returns
/// what there is. `None` for page 0.
pub fn range(page: u64) -> Option<(u64, u64)> {
    let start = page.checked_sub(1)?.checked_mul(PAGE_BYTES)?;
    Some((start, PAGE_BYTES + OVERLAP_BYTES))
}

/// The text of a page from the bytes [`range`] read: a character the page's
/// start cuts belongs to the previous page and is dropped, one its end cuts
/// is finished from the overlap. Invalid UTF-8 (none is stored today, but
/// the bytes come from a VM) is shown as U+FFFD.
pub fn page_text(read: &[u8], first_page: bool) -> String {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let mut start = 0;
    if !first_page {
        while start < read.len() && start < OVERLAP_BYTES as usize && is_continuation(read[start]) {
            start += 1;
        }
    }
    let nominal = read.len().min(PAGE_BYTES as usize);
    let mut end = nominal.max(start);
    while end < read.len() && is_continuation(read[end]) {
        end += 1;
    }
    String::from_utf8_lossy(&read[start..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads page `page` of `log` as the service does.
    fn page(log: &[u8], page: u64) -> String {
        let (off, len) = range(page).expect("a page");
        let off = (off as usize).min(log.len());
        let end = (off + len as usize).min(log.len());
        page_text(&log[off..end], page == 1)
    }

    #[test]
    fn pages_cover_a_log_exactly_once_even_across_multibyte_characters() {
        // "é" is two bytes, "€" three: boundaries fall inside characters.
        let text: String = "é€x".repeat(PAGE_BYTES as usize / 2);
        let log = text.as_bytes();
        let n = pages(log.len() as u64);
        assert!(n >= 3, "{n} pages");
        let joined: String = (1..=n).map(|p| page(log, p)).collect();
        assert_eq!(joined, text);
        assert_eq!(page(log, n + 1), "");
        assert_eq!(range(0), None);
    }

    #[test]
    fn an_empty_log_has_one_empty_page() {
        assert_eq!(pages(0), 1);
        assert_eq!(range(1), Some((0, PAGE_BYTES + OVERLAP_BYTES)));
        assert_eq!(page_text(&[], true), "");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_trusted() {
        assert_eq!(
            page_text(b"ok \xff\xfe end", true),
            "ok \u{fffd}\u{fffd} end"
        );
    }
}
