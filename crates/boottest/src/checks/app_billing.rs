//! APP-BILLING live: with the plan's postpaid options declared (`[billing]
//! params` in the manifest), the app on the first VM pushes its usage to the
//! marketplace's billing emulator for the whole watch, and the emulator
//! accepts it: every push decrypts (secure) or authenticates (simple),
//! names only the plan's options, holds at most 50 metrics, and pushes keep
//! being accepted after the first access key expired (the app followed the
//! rotation through the token file). `unknown` when the manifest declares
//! no postpaid option: such a plan bills nothing by usage.

use ibkit_api::operator::{InstanceUsage, PushRecord, PushScheme};
use ibkit_rules::{Evidence, Outcome};

use super::unreachable;
use crate::observe::Observations;

/// Kinds of refusal (scheme, status, reason) quoted in a failure.
const QUOTED: usize = 5;

pub fn check(o: &Observations) -> Outcome {
    let mut out = Outcome::default();
    let Some(spec) = o.billing_spec.as_ref().filter(|b| b.bills()) else {
        return Outcome::unknown(
            "the app declares no postpaid option ([billing] params in the manifest): nothing is billed by usage, so there is no push to check",
        );
    };
    let Some(b) = &o.billing else {
        return Outcome::unknown(unreachable(o).unwrap_or_else(|| {
            "the billing watch did not run (the first VM ended before it)".into()
        }));
    };
    if let Some(setup) = &b.setup
        && setup.exit_code != Some(0)
    {
        out.fail(
            "setup-failed",
            format!(
                "the manifest's billing setup failed (exit {}): {}",
                setup
                    .exit_code
                    .map_or_else(|| "none".to_string(), |c| c.to_string()),
                setup.output_tail
            ),
            Evidence::note("[billing] setup"),
        );
        return out;
    }
    if let Some(e) = &b.error {
        out.unverified(format!("the billing watch could not be done: {e}"));
        return out;
    }
    let Some(usage) = &b.usage else {
        out.unverified("the emulator's usage record was not read");
        return out;
    };
    judge(&Watch {
        params: &spec.params,
        token_file: Some(&spec.token_file),
        usage,
        watched_s: b.watched_s,
        ended_at: b.ended_at,
        place: &format!("emulator at {}", b.url),
    })
}

/// What a billing verdict is drawn from: the emulator's record of an
/// instance over a watch (boot-test's, or a deployment's life so far).
pub struct Watch<'a> {
    /// The plan's postpaid options.
    pub params: &'a [String],
    /// The token file the platform keeps current, when known.
    pub token_file: Option<&'a str>,
    pub usage: &'a InstanceUsage,
    pub watched_s: f64,
    /// Unix ms when the watch ended.
    pub ended_at: i64,
    /// Where the pushes went, for the evidence.
    pub place: &'a str,
}

/// APP-BILLING's verdict on a watch: pushes counted, none refused, the
/// rotation followed.
pub fn judge(w: &Watch<'_>) -> Outcome {
    let mut out = Outcome::default();
    if w.params.is_empty() {
        return Outcome::unknown(
            "no postpaid option: nothing is billed by usage, so there is no push to check",
        );
    }
    let usage = w.usage;
    let token_file = w.token_file.unwrap_or("the token file");
    let counted = |p: &&PushRecord| p.status == 200 && p.scheme != PushScheme::Decrypt;
    let accepted: Vec<&PushRecord> = usage.pushes.iter().filter(counted).collect();
    let refused: Vec<&PushRecord> = usage.pushes.iter().filter(|p| p.status != 200).collect();
    // An app that pushes every 10 s repeats the same mistake: quote each
    // kind of refusal once, with how often it happened.
    let mut kinds: Vec<(&PushRecord, usize)> = Vec::new();
    for p in &refused {
        match kinds
            .iter_mut()
            .find(|(k, _)| k.scheme == p.scheme && k.status == p.status && k.error == p.error)
        {
            Some((_, n)) => *n += 1,
            None => kinds.push((p, 1)),
        }
    }
    for (p, n) in kinds.iter().take(QUOTED) {
        let times = if *n > 1 {
            format!(" ({n} times)")
        } else {
            String::new()
        };
        out.fail(
            "push-refused",
            format!(
                "a {} push was refused with HTTP {}{times}: {}",
                p.scheme.as_str(),
                p.status,
                p.error.as_deref().unwrap_or("no reason given")
            ),
            Evidence::note(w.place),
        );
    }
    let unquoted: usize = kinds.iter().skip(QUOTED).map(|(_, n)| n).sum();
    if unquoted > 0 {
        out.fail(
            "push-refused",
            format!("{unquoted} more pushes were refused, for other reasons"),
            Evidence::note(w.place),
        );
    }
    if accepted.is_empty() {
        out.fail(
            "no-push",
            format!(
                "no usage push was accepted in {:.0} s (options {}); the app must push its usage to the marketplace",
                w.watched_s,
                w.params.join(", ")
            ),
            Evidence::note(format!(
                "{} ({} push(es) seen in all)",
                w.place,
                usage.pushes.len()
            )),
        );
        return out;
    }
    // A key expired during the watch: the app must have moved on to a newer
    // one, or its pushes would have been refused (and quoted above).
    let secure: Vec<&&PushRecord> = accepted
        .iter()
        .filter(|p| p.scheme == PushScheme::Secure)
        .collect();
    let first_key = usage.keys.first();
    let rotated = match first_key {
        Some(k) if k.expires_at <= w.ended_at => Some(k),
        _ => None,
    };
    if let Some(first) = rotated
        && !secure.is_empty()
        && !secure
            .iter()
            .any(|p| p.key_created_at.is_some_and(|c| c > first.created_at))
    {
        out.fail(
            "no-rotation",
            format!(
                "the access key rotated {} time(s), but every accepted push used the first key: the app must re-read {} before each push",
                usage.keys.len().saturating_sub(1),
                token_file
            ),
            Evidence::at(token_file, "the token file the platform keeps current"),
        );
    }
    if out.findings.is_empty() {
        let totals: Vec<String> = usage
            .params
            .iter()
            .map(|p| format!("{} = {} ({} values)", p.param, p.total, p.count))
            .collect();
        let schemes: Vec<&str> = [PushScheme::Simple, PushScheme::Secure]
            .into_iter()
            .filter(|s| accepted.iter().any(|p| p.scheme == *s))
            .map(PushScheme::as_str)
            .collect();
        out.proof(Evidence::note(format!(
            "{} push(es) accepted in {:.0} s ({}), none refused; totals: {}",
            accepted.len(),
            w.watched_s,
            schemes.join(" and "),
            totals.join(", ")
        )));
        if rotated.is_some() && !secure.is_empty() {
            out.proof(Evidence::note(format!(
                "the access key rotated {} time(s) and the first expired during the watch; later pushes used the new keys from {}",
                usage.keys.len().saturating_sub(1),
                token_file
            )));
        }
    }
    out
}
