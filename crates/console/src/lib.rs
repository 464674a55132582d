//! The read-only web console of `ibkit serve`: pure functions from the
//! operator API's types (`ibkit_api::operator`) to HTML, plus the script
//! and style sheet the pages load. No I/O and no service code here: the
//! service (`ibkit-server`'s `routes/console.rs`) reads the data, checks the
//! session and serves what these functions return.
//!
//! Everything shown is escaped ([`html::esc`], [`html::log_text`]); pages
//! carry no inline script or style, so the service's Content-Security-Policy
//! ([`CONTENT_SECURITY_POLICY`]) can forbid both.

pub mod html;
pub mod log;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ibkit_api::operator::{
    DeploymentTimeline, HealthResultView, HostView, InstanceDetail, InstanceSummary, Milestone,
    RecoveryRequest, StepView,
};
use ibkit_api::wire::StepStatus;

use html::{age, badge, bytes, duration, esc, time, time_or_dash, url_segment};

/// Where the console lives; its session cookie is scoped to this path.
pub const BASE: &str = "/console";

/// The route patterns (axum syntax), one owner for the service's router and
/// the links the pages render.
pub mod paths {
    pub const LIST: &str = "/console";
    pub const LIST_LIVE: &str = "/console/live";
    pub const LOGIN: &str = "/console/login";
    pub const LOGOUT: &str = "/console/logout";
    pub const SCRIPT: &str = "/console/assets/console.js";
    pub const STYLE: &str = "/console/assets/console.css";
    pub const INSTANCE: &str = "/console/instances/{id}";
    pub const INSTANCE_LIVE: &str = "/console/instances/{id}/live";
    pub const LOG: &str = "/console/instances/{id}/logs/{host}/{group}/{index}";
    pub const RESULT: &str = "/console/instances/{id}/results/{host}/{group}/{index}";
}

/// The script every page loads: polls the page's live endpoint and swaps
/// the sections that changed (no framework, no CDN).
pub const SCRIPT: &str = include_str!("../assets/console.js");
/// The style sheet every page loads.
pub const STYLE: &str = include_str!("../assets/console.css");

/// Only this origin's script, style and fetches; no inline script or
/// style, no plugins, no framing, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ibkit_console";

/// A page: a full HTML document.
fn layout(title: &str, logged_in: bool, body: &str) -> String {
    let logout = if logged_in {
        format!(
            "<form class=\"logout\" method=\"post\" action=\"{}\"><button type=\"submit\">Log out</button></form>",
            paths::LOGOUT
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{title} · ibkit</title>\
         <link rel=\"stylesheet\" href=\"{style}\">\
         <script src=\"{script}\" defer></script></head>\
         <body><header><a class=\"home\" href=\"{list}\">ibkit console</a>{logout}</header>\
         <main>{body}</main></body></html>\n",
        title = esc(title),
        style = paths::STYLE,
        script = paths::SCRIPT,
        list = paths::LIST,
    )
}

/// The login form; `error` says why the last attempt failed.
pub fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Log in</h1>{error}\
         <form class=\"login\" method=\"post\" action=\"{login}\">\
         <label for=\"token\">Operator token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\">Log in</button></form>\
         <p class=\"hint\">The token is in <code>STATE/operator-token</code> on the service's machine.</p>",
        login = paths::LOGIN,
    );
    layout("Log in", false, &body)
}

/// The URL of an instance's page.
pub fn instance_url(id: &str) -> String {
    format!("{}/instances/{}", BASE, url_segment(id))
}

fn step_url(kind: &str, id: &str, s: &StepView) -> String {
    format!(
        "{}/{kind}/{}/{}/{}",
        instance_url(id),
        url_segment(s.host.as_str()),
        url_segment(s.group.as_str()),
        s.index
    )
}

/// The URL of page `page` of a step's log.
pub fn log_url(id: &str, s: &StepView, page: u64) -> String {
    format!("{}?page={page}", step_url("logs", id, s))
}

/// A live region: the script fetches `src` and swaps each `<section id>`
/// whose content changed.
fn live(src: &str, sections: &str) -> String {
    format!(
        "<div id=\"live\" data-live-src=\"{}\">{sections}</div>\
         <p id=\"live-status\" class=\"hint\">Updates live.</p>",
        esc(src)
    )
}

/// An instance in the list, with its number of hosts.
pub struct ListRow {
    pub summary: InstanceSummary,
    pub hosts: usize,
}

/// The list's live part: one table.
pub fn list_live(rows: &[ListRow]) -> String {
    let mut t = String::from(
        "<section id=\"instances\"><table><thead><tr><th>Instance</th><th>Name</th>\
         <th>Status</th><th>Reason</th><th>Hosts</th><th>Created</th></tr></thead><tbody>",
    );
    if rows.is_empty() {
        t.push_str("<tr><td colspan=\"6\" class=\"hint\">No instances yet.</td></tr>");
    }
    for r in rows {
        let s = &r.summary;
        let _ = write!(
            t,
            "<tr data-instance=\"{id}\"><td><a href=\"{url}\"><code>{id}</code></a></td>\
             <td>{name}</td><td>{status}</td><td>{reason}</td><td>{hosts}</td><td>{created}</td></tr>",
            id = esc(s.id.as_str()),
            url = esc(&instance_url(s.id.as_str())),
            name = esc(&s.name),
            status = badge(s.status.as_str()),
            reason = esc(s.status_reason.as_deref().unwrap_or("")),
            hosts = r.hosts,
            created = time(s.created_at),
        );
    }
    t.push_str("</tbody></table></section>");
    t
}

/// The instance list.
pub fn list_page(rows: &[ListRow]) -> String {
    let body = format!(
        "<h1>Instances</h1>{}",
        live(paths::LIST_LIVE, &list_live(rows))
    );
    layout("Instances", true, &body)
}

/// One part of the instance page, swapped on its own when it changes.
pub struct Section {
    /// The element id (stable: the script matches sections by it).
    pub id: String,
    pub title: String,
    /// Rendered (escaped) HTML.
    pub body: String,
}

/// A step as the instance page lists it: without its log (which may be
/// many MiB), with the log's size.
pub struct StepRow {
    pub view: StepView,
    /// `None`: no log yet.
    pub log_bytes: Option<u64>,
}

/// What the instance page shows; the service fills it through the same
/// store functions as the operator endpoints.
pub struct InstanceView {
    pub detail: InstanceDetail,
    /// Health check results by host name.
    pub checks: BTreeMap<String, Vec<HealthResultView>>,
    /// Steps by host name, in dispatch order.
    pub steps: BTreeMap<String, Vec<StepRow>>,
    /// The instance's recovery requests, oldest first.
    pub recovery: Vec<RecoveryRequest>,
    /// What `ibkit deploy` last published (attempts, VM recoveries); none
    /// for an instance no deployment controller runs.
    pub deployment: Option<DeploymentTimeline>,
}

/// The sections of the instance page, in order. A new part (e.g. deploy
/// attempts) is one more [`Section`] pushed by the caller.
pub fn instance_sections(v: &InstanceView, now: i64) -> Vec<Section> {
    let d = &v.detail;
    let mut out = vec![Section {
        id: "summary".into(),
        title: "Status".into(),
        body: format!(
            "<dl><dt>Status</dt><dd>{}</dd><dt>Reason</dt><dd>{}</dd>\
             <dt>Generation</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd><dt>Updated</dt><dd>{} ({})</dd>\
             <dt>Steps</dt><dd>{}</dd></dl>",
            badge(d.status.as_str()),
            esc(d.status_reason.as_deref().unwrap_or("–")),
            d.generation,
            time(d.created_at),
            time(d.updated_at),
            age(d.updated_at, now),
            step_counts(&d.steps),
        ),
    }];
    out.push(Section {
        id: "hosts".into(),
        title: "Hosts".into(),
        body: hosts_table(&d.hosts, now),
    });
    for h in &d.hosts {
        let name = h.name.as_str();
        let checks = v.checks.get(name).map(Vec::as_slice).unwrap_or_default();
        let steps = v.steps.get(name).map(Vec::as_slice).unwrap_or_default();
        out.push(Section {
            id: format!("host-{}", url_segment(name)),
            title: format!("Host {name}"),
            body: format!(
                "<h3>Health checks</h3>{}<h3>Steps</h3>{}",
                checks_table(checks, now),
                steps_table(d.id.as_str(), steps)
            ),
        });
    }
    out.push(Section {
        id: "recovery".into(),
        title: "Recovery requests".into(),
        body: recovery_table(&v.recovery),
    });
    out.push(Section {
        id: "deployment".into(),
        title: "Deployment".into(),
        body: deployment_section(v.deployment.as_ref()),
    });
    out
}

/// The instance page's live part: its sections.
pub fn instance_live(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        let _ = write!(
            out,
            "<section id=\"{}\"><h2>{}</h2>{}</section>",
            esc(&s.id),
            esc(&s.title),
            s.body
        );
    }
    out
}

/// The instance page.
pub fn instance_page(detail: &InstanceDetail, sections: &[Section]) -> String {
    let id = detail.id.as_str();
    let body = format!(
        "<h1>{} <code>{}</code></h1>{}",
        esc(&detail.name),
        esc(id),
        live(
            &format!("{}/live", instance_url(id)),
            &instance_live(sections)
        )
    );
    layout(&detail.name, true, &body)
}

fn step_counts(c: &ibkit_api::operator::StepCounts) -> String {
    let parts: Vec<String> = c
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{} {n}", esc(s.as_str())))
        .collect();
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join(" · ")
    }
}

fn hosts_table(hosts: &[HostView], now: i64) -> String {
    let mut t = String::from(
        "<table><thead><tr><th>Host</th><th>Agent</th><th>Health</th>\
         <th>Last heartbeat</th><th>Agent version</th><th>Steps</th></tr></thead><tbody>",
    );
    for h in hosts {
        let agent = if h.paired {
            format!("{} since {}", badge("paired"), time_or_dash(h.paired_at))
        } else {
            let mut s = format!(
                "{} key expires {}",
                badge("not paired"),
                time_or_dash(h.pairing_key_expires_at)
            );
            if let Some(r) = &h.last_pairing_refusal {
                let _ = write!(s, "<br><span class=\"error\">refused: {}</span>", esc(r));
            }
            s
        };
        let mut health = badge(h.health.as_str());
        if let Some(r) = &h.unhealthy_reason {
            let _ = write!(
                health,
                " {} (since {})",
                esc(r),
                time_or_dash(h.unhealthy_since)
            );
        }
        let heartbeat = h.last_heartbeat_at.map_or_else(
            || "never".to_string(),
            |t| format!("{} <span class=\"hint\">{}</span>", age(t, now), time(t)),
        );
        let _ = write!(
            t,
            "<tr data-host=\"{name}\"><td>{name}</td><td>{agent}</td><td>{health}</td>\
             <td>{heartbeat}</td><td>{version}</td><td>{steps}</td></tr>",
            name = esc(h.name.as_str()),
            version = esc(h.agent_version.as_deref().unwrap_or("–")),
            steps = step_counts(&h.steps),
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn checks_table(checks: &[HealthResultView], now: i64) -> String {
    if checks.is_empty() {
        return "<p class=\"hint\">No health check results.</p>".into();
    }
    let mut t = String::from(
        "<table><thead><tr><th>Check</th><th>Result</th><th>Detail</th>\
         <th>Ran</th><th>Last passed</th></tr></thead><tbody>",
    );
    for c in checks {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td><pre class=\"inline\">{}</pre></td><td>{}</td><td>{}</td></tr>",
            esc(&c.check),
            badge(if c.ok { "ok" } else { "failed" }),
            html::log_text(&c.detail),
            age(c.received_at, now),
            time_or_dash(c.last_ok_at),
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn steps_table(id: &str, steps: &[StepRow]) -> String {
    if steps.is_empty() {
        return "<p class=\"hint\">No steps.</p>".into();
    }
    let mut t = String::from(
        "<table class=\"steps\"><thead><tr><th>Group</th><th>#</th><th>Status</th>\
         <th>Attempts</th><th>Exit</th><th>Duration</th><th>Started</th><th>Finished</th>\
         <th>Log</th><th>Result</th><th>Error</th></tr></thead><tbody>",
    );
    for StepRow { view: s, log_bytes } in steps {
        let exit = match (s.exit_code, s.signal) {
            _ if s.timed_out => "timed out".to_string(),
            (_, Some(sig)) => format!("signal {sig}"),
            (Some(code), None) => code.to_string(),
            (None, None) => "–".into(),
        };
        let exit = if s.halted {
            format!("{exit} (halted)")
        } else {
            exit
        };
        let took = match (s.started_at_ms, s.finished_at_ms) {
            (Some(a), Some(b)) => duration(b.saturating_sub(a)),
            _ => "–".into(),
        };
        let log = match log_bytes {
            Some(n) => {
                let mut link = format!(
                    "<a class=\"log\" href=\"{}\">log</a> {}",
                    esc(&log_url(id, s, 1)),
                    bytes(*n)
                );
                if s.log_truncated_bytes > 0 {
                    let _ = write!(
                        link,
                        " <span class=\"hint\">(agent dropped {})</span>",
                        bytes(u64::try_from(s.log_truncated_bytes).unwrap_or(0))
                    );
                }
                link
            }
            None => "–".into(),
        };
        let _ = write!(
            t,
            "<tr data-step=\"{host}/{group}/{index}\" data-status=\"{status_word}\">\
             <td>{group}</td><td>{index}</td><td>{status}</td><td>{attempts}</td><td>{exit}</td>\
             <td>{took}</td><td>{started}</td><td>{finished}</td><td>{log}</td><td>{result}</td>\
             <td>{error}</td></tr>",
            host = esc(s.host.as_str()),
            group = esc(s.group.as_str()),
            index = s.index,
            status_word = esc(s.status.as_str()),
            status = badge(s.status.as_str()),
            attempts = s.attempts,
            started = time_or_dash(s.started_at_ms),
            finished = time_or_dash(s.finished_at_ms),
            result = masked_result(id, s),
            error = esc(s.error.as_deref().unwrap_or("")),
        );
    }
    t.push_str("</tbody></table>");
    t
}

/// Results are masked: the service's API does not say which are secrets
/// (a deploy manifest's `sensitive` outputs are known only to `ibkit
/// deploy`), and a result often is one (a generated password), so the
/// page shows sizes and a link that reveals one result on request.
fn masked_result(id: &str, s: &StepView) -> String {
    let raw = s.result.as_ref().map_or(0, String::len) as u64;
    let structured = s
        .structured_result_bytes
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    if raw == 0 && structured == 0 {
        return "–".into();
    }
    let mut what = Vec::new();
    if raw > 0 {
        what.push(format!("raw {}", bytes(raw)));
    }
    if structured > 0 {
        what.push(format!("structured {}", bytes(structured)));
    }
    format!(
        "<span class=\"masked\">••••</span> {} <a class=\"reveal\" href=\"{}\">reveal</a>",
        what.join(", "),
        esc(&step_url("results", id, s))
    )
}

fn recovery_table(list: &[RecoveryRequest]) -> String {
    if list.is_empty() {
        return "<p class=\"hint\">No recovery requests.</p>".into();
    }
    let mut t = String::from(
        "<table><thead><tr><th>Host</th><th>Kind</th><th>Reason</th><th>Status</th>\
         <th>Opened</th><th>Resolved</th></tr></thead><tbody>",
    );
    for r in list {
        let _ = write!(
            t,
            "<tr data-recovery=\"{id}\" data-status=\"{status_word}\"><td>{host}</td><td>{kind}</td>\
             <td>{reason}</td><td>{status}</td><td>{opened}</td><td>{resolved}</td></tr>",
            id = esc(r.id.as_str()),
            status_word = esc(r.status.as_str()),
            host = esc(r.host.as_str()),
            kind = esc(r.kind.as_str()),
            reason = esc(&r.reason),
            status = badge(r.status.as_str()),
            opened = time(r.created_at),
            resolved = time_or_dash(r.resolved_at),
        );
    }
    t.push_str("</tbody></table>");
    t
}

/// The deployment controller's attempts and VM recoveries, each with its
/// milestones as offsets from its start ("where the time went").
fn deployment_section(t: Option<&DeploymentTimeline>) -> String {
    let Some(t) = t else {
        return "<p class=\"hint\">No deployment controller published a timeline \
                (the instance was not created by <code>ibkit deploy</code>, or it has not \
                published yet).</p>"
            .into();
    };
    let mut out = format!(
        "<dl><dt>Deployment</dt><dd>{}</dd><dt>Backend</dt><dd>{}</dd>\
         <dt>Status</dt><dd>{}</dd><dt>Reason</dt><dd>{}</dd><dt>Published</dt><dd>{}</dd></dl>",
        esc(&t.deployment),
        esc(&t.backend),
        badge(&t.status),
        esc(t.status_reason.as_deref().unwrap_or("–")),
        time(t.published_at),
    );
    out.push_str("<h3>Attempts</h3>");
    if t.attempts.is_empty() {
        out.push_str("<p class=\"hint\">No attempts yet.</p>");
    } else {
        out.push_str(
            "<table><thead><tr><th>#</th><th>Kind</th><th>Outcome</th><th>Started</th>\
             <th>Took</th><th>Milestones</th><th>Failure</th></tr></thead><tbody>",
        );
        for a in &t.attempts {
            let _ = write!(
                out,
                "<tr data-attempt=\"{n}\"><td>{n}</td><td>{kind}</td><td>{outcome}</td><td>{start}</td>\
                 <td>{took}</td><td>{milestones}</td><td><pre class=\"cell\">{failure}</pre></td></tr>",
                n = a.number,
                kind = esc(&a.kind),
                outcome = badge(a.outcome.as_deref().unwrap_or("applying")),
                start = time(a.started_at),
                took = a
                    .ended_at
                    .map_or_else(|| "–".into(), |e| duration(e - a.started_at)),
                milestones = milestone_list(&a.milestones, a.started_at),
                failure = esc(a.failure.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<h3>VM recoveries</h3>");
    if t.recoveries.is_empty() {
        out.push_str("<p class=\"hint\">No VM was recreated.</p>");
        return out;
    }
    out.push_str(
        "<table><thead><tr><th>Host</th><th>Kind</th><th>Reason</th><th>Detected</th>\
         <th>VM</th><th>Back in</th><th>Milestones</th><th>Failure</th></tr></thead><tbody>",
    );
    for r in &t.recoveries {
        let _ = write!(
            out,
            "<tr data-vm-recovery=\"{host}\"><td>{host}</td><td>{kind}</td><td>{reason}</td>\
             <td>{detected}</td><td>{old} → {new}</td><td>{back}</td><td>{milestones}</td>\
             <td>{failure}</td></tr>",
            host = esc(r.host.as_str()),
            kind = esc(&r.kind),
            reason = esc(&r.reason),
            detected = time(r.detected_at),
            old = esc(r.old_vm.as_deref().unwrap_or("–")),
            new = esc(r.new_vm.as_deref().unwrap_or("–")),
            back = r
                .recovered_at
                .map_or_else(|| "–".into(), |e| duration(e - r.detected_at)),
            milestones = milestone_list(&r.milestones, r.detected_at),
            failure = esc(r.failure.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// `name +12s` for each milestone, from `start`.
fn milestone_list(list: &[Milestone], start: i64) -> String {
    if list.is_empty() {
        return "–".into();
    }
    let items: Vec<String> = list
        .iter()
        .map(|m| {
            format!(
                "<li>{} <span class=\"hint\">+{}</span></li>",
                esc(&m.name),
                duration(m.at.saturating_sub(start))
            )
        })
        .collect();
    format!("<ul class=\"milestones\">{}</ul>", items.concat())
}

/// Where a step is: for the log and result pages' headings and links.
pub struct StepRef<'a> {
    pub instance: &'a str,
    pub host: &'a str,
    pub group: &'a str,
    pub index: u32,
}

impl StepRef<'_> {
    fn url(&self, kind: &str) -> String {
        format!(
            "{}/{kind}/{}/{}/{}",
            instance_url(self.instance),
            url_segment(self.host),
            url_segment(self.group),
            self.index
        )
    }

    fn heading(&self) -> String {
        format!(
            "<p><a href=\"{}\">← instance</a></p>",
            esc(&instance_url(self.instance))
        )
    }
}

/// One page of a step's log: `text` is the page's text ([`log::page_text`]),
/// `total` the log's size in bytes.
pub fn log_page(
    step: &StepRef<'_>,
    status: StepStatus,
    page: u64,
    total: u64,
    text: &str,
) -> String {
    let pages = log::pages(total);
    let link = |p: u64, label: &str, rel: &str| {
        if (1..=pages).contains(&p) && p != page {
            format!(
                "<a rel=\"{rel}\" class=\"{rel}\" href=\"{}?page={p}\">{label}</a>",
                esc(&step.url("logs"))
            )
        } else {
            format!("<span class=\"hint\">{label}</span>")
        }
    };
    let start = (page - 1).saturating_mul(log::PAGE_BYTES);
    let nav = format!(
        "<nav class=\"pager\">{} <span class=\"page\">page {page} of {pages}</span> {}</nav>",
        link(page.saturating_sub(1), "← previous", "prev"),
        link(page + 1, "next →", "next"),
    );
    let body = format!(
        "{back}<h1>Log of {host}/{group}/{index} {status}</h1>\
         <p class=\"hint\">{total} in all; this page from byte {start}. Control characters are shown as <code>cat -v</code> does (<code>^[</code> is ESC).</p>\
         {nav}<pre class=\"log\" id=\"log\">{text}</pre>{nav}",
        back = step.heading(),
        host = esc(step.host),
        group = esc(step.group),
        index = step.index,
        status = badge(status.as_str()),
        total = bytes(total),
        text = html::log_text(text),
    );
    layout(
        &format!("Log {}/{}/{}", step.host, step.group, step.index),
        true,
        &body,
    )
}

/// How much of a result the result page shows; the API has all of it.
pub const RESULT_SHOWN_BYTES: usize = 256 << 10;

/// A step's result, revealed on request.
pub fn result_page(
    step: &StepRef<'_>,
    raw: Option<&str>,
    structured: Option<&serde_json::Value>,
) -> String {
    let shown = |text: &str| {
        let mut end = text.len().min(RESULT_SHOWN_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let more = if end < text.len() {
            format!(
                "<p class=\"hint\">{} more not shown; the API has all of it.</p>",
                bytes((text.len() - end) as u64)
            )
        } else {
            String::new()
        };
        format!(
            "<pre class=\"log\">{}</pre>{more}",
            html::log_text(&text[..end])
        )
    };
    let raw = raw.map_or_else(|| "<p class=\"hint\">None.</p>".to_string(), shown);
    let structured = structured.map_or_else(
        || "<p class=\"hint\">None.</p>".to_string(),
        |v| shown(&serde_json::to_string_pretty(v).unwrap_or_default()),
    );
    let body = format!(
        "{back}<h1>Result of {host}/{group}/{index}</h1>\
         <h2>Raw (stdout)</h2>{raw}<h2>Structured</h2>{structured}",
        back = step.heading(),
        host = esc(step.host),
        group = esc(step.group),
        index = step.index,
    );
    layout(
        &format!("Result {}/{}/{}", step.host, step.group, step.index),
        true,
        &body,
    )
}

/// A page for an error (an unknown instance or step, a database error):
/// the message is escaped like everything else.
pub fn error_page(status: u16, message: &str) -> String {
    let body = format!(
        "<h1>Error {status}</h1><p class=\"error\">{}</p><p><a href=\"{}\">← instances</a></p>",
        esc(message),
        paths::LIST
    );
    layout(&format!("Error {status}"), true, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOSTILE: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'";

    /// An instance whose every vendor-controlled string is markup.
    fn hostile_view() -> InstanceView {
        let step: StepView = serde_json::from_value(json!({
            "host": "a", "group": "g", "index": 1, "hash": "h", "once": false,
            "status": "failed", "exec_id": "e", "dispatched_at": 1, "attempts": 2,
            "exit_code": 7, "signal": null, "timed_out": false, "halted": false,
            "started_at_ms": 1000, "finished_at_ms": 4000, "log": null,
            "log_truncated_bytes": 0, "result": "TOP-SECRET-RESULT",
            "result_truncated_bytes": 0, "structured_result": null,
            "structured_result_bytes": null, "error": HOSTILE, "ever_ok": false
        }))
        .expect("a step view");
        let detail: InstanceDetail = serde_json::from_value(json!({
            "id": "00000000-0000-4000-8000-000000000001", "name": HOSTILE,
            "status": "failed", "status_reason": HOSTILE, "generation": 1,
            "created_at": 0, "updated_at": 0,
            "spec": {"name": "x", "hosts": [{"name": "a"}]},
            "hosts": [{"name": "a", "paired": false, "paired_at": null,
                "last_heartbeat_at": null, "agent_version": HOSTILE, "health": "unhealthy",
                "unhealthy_reason": HOSTILE, "unhealthy_since": 5,
                "checks_active_since": null, "pairing_key_expires_at": 9,
                "pairing_key_used_at": null, "last_pairing_refusal": HOSTILE,
                "last_pairing_refusal_at": 9, "steps": {"failed": 1}}],
            "steps": {"failed": 1}
        }))
        .expect("an instance detail");
        let check: HealthResultView = serde_json::from_value(json!({
            "check": "web", "ok": false, "detail": HOSTILE, "at_ms": 1,
            "received_at": 1, "last_ok_at": null
        }))
        .expect("a health result");
        let recovery: RecoveryRequest = serde_json::from_value(json!({
            "id": "00000000-0000-4000-8000-000000000002",
            "instance": "00000000-0000-4000-8000-000000000001", "host": "a",
            "kind": "agent_failed", "reason": HOSTILE, "created_at": 1,
            "status": "open", "resolved_at": null
        }))
        .expect("a recovery request");
        InstanceView {
            detail,
            checks: BTreeMap::from([("a".to_string(), vec![check])]),
            steps: BTreeMap::from([(
                "a".to_string(),
                vec![StepRow {
                    view: step,
                    log_bytes: Some(300 << 10),
                }],
            )]),
            recovery: vec![recovery],
            deployment: Some(
                serde_json::from_value(json!({
                    "deployment": HOSTILE, "backend": HOSTILE, "status": "failed",
                    "status_reason": HOSTILE, "published_at": 9000,
                    "attempts": [{"number": 1, "kind": "create", "started_at": 1000,
                        "ended_at": 61_000, "outcome": "failed", "failure": HOSTILE,
                        "milestones": [{"name": HOSTILE, "at": 13_000}]}],
                    "recoveries": [{"host": "a", "kind": HOSTILE, "reason": HOSTILE,
                        "detected_at": 5000, "recreated_at": 6000, "recovered_at": 9000,
                        "old_vm": HOSTILE, "new_vm": "a-a2", "failure": HOSTILE,
                        "milestones": [{"name": "recreated", "at": 6000}]}],
                }))
                .expect("a deployment timeline"),
            ),
        }
    }

    #[test]
    fn vendor_text_is_escaped_everywhere_on_the_instance_page() {
        let v = hostile_view();
        let sections = instance_sections(&v, 10_000);
        let page = instance_page(&v.detail, &sections);
        assert!(
            !page.contains("<img") && !page.contains("<script>"),
            "{page}"
        );
        // Only the page's own script tag.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        // name, reason, agent version, unhealthy reason, refusal, check
        // detail, step error, recovery reason, the title, and the
        // deployment timeline's nine texts.
        let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;";
        assert!(page.matches(escaped).count() >= 18, "{page}");
        // Milestones as offsets from the start of their attempt/recovery.
        assert!(page.contains("+12s") && page.contains("+1s"), "{page}");
        assert!(page.contains("1m 0s"), "the attempt took 60 s: {page}");
        // The result is masked; its size and a reveal link are shown.
        assert!(!page.contains("TOP-SECRET-RESULT"));
        assert!(page.contains("raw 17 B") && page.contains("/results/a/g/1"));
        assert!(page.contains("/logs/a/g/1?page=1") && page.contains("300.0 KiB"));
        // Each section is swappable on its own.
        let ids: Vec<&str> = sections.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["summary", "hosts", "host-a", "recovery", "deployment"]
        );
    }

    #[test]
    fn log_pages_link_only_to_pages_that_exist() {
        let step = StepRef {
            instance: "i",
            host: "a",
            group: "g",
            index: 1,
        };
        let total = 3 * log::PAGE_BYTES - 10;
        let first = log_page(&step, StepStatus::Ok, 1, total, "x");
        assert!(first.contains("page 1 of 3") && first.contains("?page=2"));
        assert!(!first.contains("?page=0") && !first.contains("rel=\"prev\""));
        let last = log_page(&step, StepStatus::Ok, 3, total, "<b>");
        assert!(last.contains("?page=2") && !last.contains("?page=4"));
        assert!(last.contains("&lt;b&gt;") && !last.contains("<b>"));
    }
}
