//! Keeping a final report under the service's body limit
//! ([`crate::wire::MAX_REPORT_BYTES`]): the agent fits every report with it,
//! and it lives next to the limit so the two cannot drift.
//!
//! What counts is the report as it travels: JSON. A NUL byte of output
//! becomes `\u0000` (6 bytes), a newline `\n` (2), so 12 MB of NULs is a
//! 72 MB report. [`fit_outcome`] measures the log and the raw result in
//! escaped bytes and, when they do not fit, keeps the head and the tail of
//! each with a marker line and counts what it left out in
//! `log_truncated_bytes` / `result_truncated_bytes`, as the step runner
//! does for its own cap. Files are read one at a time and twice (measure,
//! then copy), so memory stays near the budget whatever the output.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};

use crate::wire::{FinalStatus, Report, ReportEvent, StepOutcome};

/// Smallest budget an agent shrinks a refused report to.
pub const MIN_REPORT_BUDGET: usize = 64 * 1024;

/// Room kept for the fields that change while fitting (counters) and for
/// the markers.
const SLACK: usize = 1024;

/// The longest `error` a report carries (it is our own text, but may quote
/// a runner's diagnostics).
const MAX_ERROR_BYTES: usize = 8 * 1024;

/// Bytes `b` takes inside a JSON string as serde_json writes it. Bytes of a
/// multi-byte character are copied as they are, one each.
fn escaped_byte_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..0x20 => 6,
        _ => 1,
    }
}

/// Length of `s` as the inside of a JSON string.
pub fn escaped_len(s: &str) -> usize {
    s.bytes().map(escaped_byte_len).sum()
}

/// One part of a field's text.
#[derive(Debug, Clone)]
pub enum Piece<'a> {
    Text(Cow<'a, str>),
    /// A file's bytes (lossy UTF-8); a missing file is empty.
    File(PathBuf),
    /// Like `File`, followed by a newline when non-empty and not ending in
    /// one.
    FileLine(PathBuf),
}

impl Piece<'_> {
    /// Calls `f` with the piece's text, in valid UTF-8 slices.
    fn each(&self, f: &mut dyn FnMut(&str)) -> io::Result<()> {
        let (path, line) = match self {
            Piece::Text(t) => {
                f(t);
                return Ok(());
            }
            Piece::File(p) => (p, false),
            Piece::FileLine(p) => (p, true),
        };
        let data = read_or_empty(path)?;
        for chunk in data.utf8_chunks() {
            f(chunk.valid());
            if !chunk.invalid().is_empty() {
                f("\u{FFFD}");
            }
        }
        if line && !data.is_empty() && !data.ends_with(b"\n") {
            f("\n");
        }
        Ok(())
    }
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(d) => Ok(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Escaped length of the pieces together.
fn measure(pieces: &[Piece]) -> io::Result<usize> {
    let mut n = 0;
    for p in pieces {
        p.each(&mut |s| n += escaped_len(s))?;
    }
    Ok(n)
}

/// The pieces' text, at most `budget` escaped bytes: all of it, or the head
/// and the tail around a marker. Returns (text, bytes left out).
fn cut(pieces: &[Piece], total: usize, budget: usize, limit: usize) -> io::Result<(String, u64)> {
    if total <= budget {
        let mut out = String::with_capacity(total);
        for p in pieces {
            p.each(&mut |s| out.push_str(s))?;
        }
        return Ok((out, 0));
    }
    // The marker's own length depends on the count; reserve its longest.
    let marker_len = escaped_len(&marker(u64::MAX, limit));
    let room = budget.saturating_sub(marker_len);
    let head_budget = room / 2;
    let tail_budget = room - head_budget;
    let tail_start = total - tail_budget;
    let mut head = String::with_capacity(head_budget);
    let mut tail = String::with_capacity(tail_budget);
    let mut cost = 0usize;
    let mut head_open = true;
    let mut left_out = 0u64;
    for p in pieces {
        p.each(&mut |s| {
            let b = s.as_bytes();
            let mut i = 0;
            if head_open {
                let mut c = cost;
                while i < b.len() && c + escaped_byte_len(b[i]) <= head_budget {
                    c += escaped_byte_len(b[i]);
                    i += 1;
                }
                while !s.is_char_boundary(i) {
                    i -= 1;
                    c -= escaped_byte_len(b[i]);
                }
                head.push_str(&s[..i]);
                cost = c;
                if i < b.len() {
                    head_open = false;
                }
            }
            let from = i;
            while i < b.len() && cost < tail_start {
                cost += escaped_byte_len(b[i]);
                i += 1;
            }
            while !s.is_char_boundary(i) {
                cost += escaped_byte_len(b[i]);
                i += 1;
            }
            left_out += (i - from) as u64;
            if i < b.len() {
                tail.push_str(&s[i..]);
                cost += escaped_len(&s[i..]);
            }
        })?;
    }
    head.push_str(&marker(left_out, limit));
    head.push_str(&tail);
    Ok((head, left_out))
}

fn marker(left_out: u64, limit: usize) -> String {
    format!(
        "\n--- ibkit: {left_out} bytes left out here (the report must stay under {limit} bytes once JSON-escaped; head and tail kept) ---\n"
    )
}

/// Serialized size of a Finished report of `outcome` (the report id is a
/// UUID, as the outbox makes it).
pub fn report_len(exec_id: &str, outcome: &StepOutcome) -> usize {
    let report = Report {
        report_id: "00000000-0000-0000-0000-000000000000".into(),
        exec_id: exec_id.to_string(),
        event: ReportEvent::Finished(Box::new(outcome.clone())),
    };
    serde_json::to_vec(&report)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

/// Fills `base.log` and `base.result` from the pieces so the Finished
/// report of `exec_id` serializes to at most `budget` bytes.
///
/// `log_cap` also limits the log (escaped bytes), as `max_output_bytes`
/// did for the attempts together. Bytes left out are added to the
/// outcome's counters. If even an empty log and result do not fit (a huge
/// structured result after the service refused smaller reports), the
/// structured result is dropped and the step fails, saying why.
pub fn fit_outcome(
    exec_id: &str,
    mut base: StepOutcome,
    log: &[Piece],
    result: &[Piece],
    budget: usize,
    log_cap: usize,
) -> io::Result<StepOutcome> {
    base.log.clear();
    base.result.clear();
    if let Some(e) = &mut base.error
        && e.len() > MAX_ERROR_BYTES
    {
        let mut end = MAX_ERROR_BYTES;
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        e.truncate(end);
        e.push_str(" […]");
    }
    let mut fixed = report_len(exec_id, &base);
    if fixed + SLACK + 2 * escaped_len(&marker(u64::MAX, budget)) > budget
        && let Some(s) = base.structured_result.take()
    {
        let why = format!(
            "the structured result ({} bytes) does not fit in a report of at most {budget} bytes \
             (the service refused larger reports); the step is failed",
            s.len()
        );
        base.status = FinalStatus::Failed;
        base.error = Some(match base.error.take() {
            Some(e) => format!("{why}; {e}"),
            None => why,
        });
        fixed = report_len(exec_id, &base);
    }
    let avail = budget.saturating_sub(fixed + SLACK);
    let log_total = measure(log)?;
    let result_total = measure(result)?;
    let log_want = log_total.min(log_cap);
    let (log_budget, result_budget) = if log_want + result_total <= avail {
        (log_want, result_total)
    } else {
        let half = avail / 2;
        if result_total <= half {
            (avail - result_total, result_total)
        } else if log_want <= half {
            (log_want, avail - log_want)
        } else {
            (half, avail - half)
        }
    };
    let (log_text, log_cut) = cut(log, log_total, log_budget, budget)?;
    let (result_text, result_cut) = cut(result, result_total, result_budget, budget)?;
    base.log = log_text;
    base.log_truncated_bytes = base.log_truncated_bytes.saturating_add(log_cut);
    base.result = result_text;
    base.result_truncated_bytes = base.result_truncated_bytes.saturating_add(result_cut);
    Ok(base)
}

/// Fits a queued report again, to `budget` (after the service refused it
/// for its size). Reports other than Finished are left as they are.
pub fn refit_report(report: &mut Report, budget: usize) -> io::Result<()> {
    let ReportEvent::Finished(outcome) = &mut report.event else {
        return Ok(());
    };
    let log = std::mem::take(&mut outcome.log);
    let result = std::mem::take(&mut outcome.result);
    let base = std::mem::replace(
        outcome.as_mut(),
        StepOutcome {
            status: FinalStatus::Failed,
            attempts: 0,
            exit_code: None,
            signal: None,
            timed_out: false,
            halted: false,
            started_at_ms: 0,
            finished_at_ms: 0,
            log: String::new(),
            log_truncated_bytes: 0,
            result: String::new(),
            result_truncated_bytes: 0,
            structured_result: None,
            error: None,
        },
    );
    let fitted = fit_outcome(
        &report.exec_id,
        base,
        &[Piece::Text(Cow::Owned(log))],
        &[Piece::Text(Cow::Owned(result))],
        budget,
        usize::MAX,
    )?;
    **outcome = fitted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> StepOutcome {
        StepOutcome {
            status: FinalStatus::Ok,
            attempts: 1,
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            halted: false,
            started_at_ms: 1,
            finished_at_ms: 2,
            log: String::new(),
            log_truncated_bytes: 0,
            result: String::new(),
            result_truncated_bytes: 0,
            structured_result: None,
            error: None,
        }
    }

    fn text(s: &str) -> Vec<Piece<'_>> {
        vec![Piece::Text(Cow::Borrowed(s))]
    }

    fn serialized(o: &StepOutcome) -> usize {
        report_len("e1", o)
    }

    #[test]
    fn escaped_lengths_match_serde_json() {
        let s = "a\"\\\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}é€😀";
        let json = serde_json::to_string(s).expect("serialises");
        assert_eq!(escaped_len(s), json.len() - 2);
    }

    /// Reproduces the lost report: 12 MB of NUL bytes (6x once escaped) and
    /// 6 MiB of \x01 made a report far over the service's limit.
    #[test]
    fn hostile_output_fits_the_budget_with_head_tail_and_counters() {
        let budget = 1 << 20;
        let nul = format!("HEAD{}TAIL", "\0".repeat(3_000_000));
        let ctl = format!("START{}END", "\u{1}".repeat(1_500_000));
        let o = fit_outcome(
            "e1",
            outcome(),
            &text(&nul),
            &text(&ctl),
            budget,
            usize::MAX,
        )
        .expect("fits");
        assert!(serialized(&o) <= budget, "{} > {budget}", serialized(&o));
        assert!(o.log.starts_with("HEAD") && o.log.ends_with("TAIL"));
        assert!(o.result.starts_with("START") && o.result.ends_with("END"));
        assert!(o.log.contains(&format!(
            "--- ibkit: {} bytes left out here (the report must stay under {budget} bytes once JSON-escaped",
            o.log_truncated_bytes
        )));
        // What is kept plus what was left out is the whole output.
        let kept_log = o.log.len() - marker(o.log_truncated_bytes, budget).len();
        assert_eq!(kept_log as u64 + o.log_truncated_bytes, nul.len() as u64);
        let kept_result = o.result.len() - marker(o.result_truncated_bytes, budget).len();
        assert_eq!(
            kept_result as u64 + o.result_truncated_bytes,
            ctl.len() as u64
        );
        // The budget is used, not wasted.
        assert!(serialized(&o) > budget * 9 / 10, "{}", serialized(&o));
    }

    #[test]
    fn small_output_is_untouched_and_short_fields_leave_room_to_the_other() {
        let o = fit_outcome(
            "e1",
            outcome(),
            &text("log\n"),
            &text("res"),
            1 << 20,
            usize::MAX,
        )
        .expect("fits");
        assert_eq!((o.log.as_str(), o.result.as_str()), ("log\n", "res"));
        assert_eq!((o.log_truncated_bytes, o.result_truncated_bytes), (0, 0));
        let big = "x".repeat(900_000);
        let o = fit_outcome(
            "e1",
            outcome(),
            &text("short"),
            &text(&big),
            1 << 20,
            usize::MAX,
        )
        .expect("fits");
        assert_eq!(o.result, big, "the short log leaves the result whole");
    }

    #[test]
    fn multibyte_and_invalid_utf8_are_cut_on_character_boundaries() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("out");
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice("é€😀".as_bytes());
            if i % 7 == 0 {
                data.push(0xff);
            }
            data.push((i % 32) as u8);
        }
        std::fs::write(&f, &data).expect("write");
        for budget in [MIN_REPORT_BUDGET, 100_000, 1 << 20] {
            let o = fit_outcome(
                "e1",
                outcome(),
                &[Piece::FileLine(f.clone())],
                &[Piece::File(f.clone())],
                budget,
                usize::MAX,
            )
            .expect("fits");
            assert!(serialized(&o) <= budget, "{} > {budget}", serialized(&o));
            assert!(o.log_truncated_bytes > 0 && o.result_truncated_bytes > 0);
        }
    }

    #[test]
    fn refit_halves_and_an_oversized_structured_result_fails_the_step() {
        let mut o = outcome();
        o.log = "\0".repeat(400_000);
        o.result = "r".repeat(400_000);
        o.structured_result = Some(
            crate::StructuredJson::from_text(
                &format!("{{\"a\":\"{}\"}}", "\\\"".repeat(200_000)),
                1 << 20,
            )
            .expect("valid"),
        );
        let mut report = Report {
            report_id: "r".into(),
            exec_id: "e1".into(),
            event: ReportEvent::Finished(Box::new(o)),
        };
        refit_report(&mut report, 1 << 20).expect("refits");
        let len = serde_json::to_vec(&report).expect("json").len();
        assert!(len <= 1 << 20, "{len}");
        let ReportEvent::Finished(o) = &report.event else {
            panic!()
        };
        assert_eq!(
            o.status,
            FinalStatus::Ok,
            "the structured result still fits"
        );
        refit_report(&mut report, MIN_REPORT_BUDGET).expect("refits");
        let len = serde_json::to_vec(&report).expect("json").len();
        assert!(len <= MIN_REPORT_BUDGET, "{len}");
        let ReportEvent::Finished(o) = &report.event else {
            panic!()
        };
        assert_eq!(o.status, FinalStatus::Failed);
        assert!(o.structured_result.is_none());
        assert!(
            o.error
                .as_deref()
                .is_some_and(|e| e.contains("does not fit in a report of at most 65536 bytes")),
            "{:?}",
            o.error
        );
    }
}
