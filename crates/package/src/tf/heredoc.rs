//! `<<-EOT` heredocs, dedented here before hcl-rs sees them.
//!
//! hcl-rs (through hcl-edit) dedents an indented heredoc literal piece by
//! literal piece, skipping the pieces after an interpolation; versions
//! before 0.19.10 cut the first characters of scripts such as
//! `#!/bin/bash` when a line held an interpolation. Terraform's rule is
//! simple: remove the indentation of the least-indented non-blank line
//! from every line of the raw text. This pass rewrites each `<<-ID`
//! heredoc into a plain `<<ID` heredoc with that rule applied, so the
//! result does not depend on the parser's own dedent, keeping every line
//! where it was (line numbers in messages stay true).

use regex::Regex;
use std::sync::LazyLock;

static START: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern
    Regex::new(r"<<-([A-Za-z_][A-Za-z0-9_-]*)[ \t]*\r?$").unwrap()
});

/// The source with every `<<-ID … ID` heredoc dedented as Terraform does.
pub fn dedent_heredocs(src: &str) -> String {
    let lines: Vec<&str> = src.split('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let start = if is_comment(line) {
            None
        } else {
            START.captures(line)
        };
        let Some(caps) = start else {
            out.push(line.to_string());
            i += 1;
            continue;
        };
        let (Some(whole), Some(id)) = (caps.get(0), caps.get(1)) else {
            out.push(line.to_string());
            i += 1;
            continue;
        };
        let id = id.as_str();
        // The heredoc's body runs to the first line that is only the id.
        let Some(end) = (i + 1..lines.len()).find(|&j| lines[j].trim() == id) else {
            // Unterminated: leave it for the parser to report.
            out.push(line.to_string());
            i += 1;
            continue;
        };
        out.push(format!("{}<<{id}", &line[..whole.start()]));
        let body = &lines[i + 1..end];
        let indent = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
            .min()
            .unwrap_or(0);
        for l in body {
            let cut = indent.min(l.len() - l.trim_start_matches([' ', '\t']).len());
            out.push(l[cut..].to_string());
        }
        out.push(id.to_string());
        i = end + 1;
    }
    out.join("\n")
}

fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with('#') || t.starts_with("//")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(src: &str) -> String {
        let body: hcl::Body = hcl::from_str(&dedent_heredocs(src)).expect("parses");
        let attr = body.attributes().next().expect("an attribute");
        match &attr.expr {
            hcl::Expression::TemplateExpr(t) => crate::tf::template_text(t).to_string(),
            hcl::Expression::String(s) => s.clone(),
            other => panic!("not a template: {other:?}"),
        }
    }

    #[test]
    fn interpolation_does_not_eat_the_shebang() {
        let src = "x = <<-EOT\n    #!/bin/bash\n    echo ${var.a}\n      indented\n  EOT\n";
        assert_eq!(content(src), "#!/bin/bash\necho ${var.a}\n  indented\n");
    }

    #[test]
    fn terraform_rule_on_the_tricky_cases() {
        // Interpolations and directives at line starts, less indented
        // lines, tabs, blank lines: the least-indented non-blank line's
        // indentation goes, from every line.
        let cases = [
            (
                "    ${var.a} first\n    #!/bin/bash\n  EOT",
                "${var.a} first\n#!/bin/bash\n",
            ),
            (
                "    #!/bin/bash\n  ${var.a}\n  EOT",
                "  #!/bin/bash\n${var.a}\n",
            ),
            (
                "    #!/bin/bash\n    %{ if true }yes%{ endif }\n    tail\n  EOT",
                "#!/bin/bash\n%{ if true }yes%{ endif }\ntail\n",
            ),
            (
                "\t\t#!/bin/bash\n\t\techo ${var.a}\n\tEOT",
                "#!/bin/bash\necho ${var.a}\n",
            ),
            (
                "    #!/bin/bash\n    echo ${var.a}\n\n    done\n  EOT",
                "#!/bin/bash\necho ${var.a}\n\ndone\n",
            ),
        ];
        for (body, want) in cases {
            let src = format!("x = <<-EOT\n{body}\n");
            assert_eq!(content(&src), want, "{src:?}");
        }
    }

    #[test]
    fn lines_keep_their_numbers_and_comments_are_left_alone() {
        let src = "# a <<-EOT in a comment\nx = <<-EOT\n  a\n\n  b\nEOT\ny = 1\n";
        let out = dedent_heredocs(src);
        assert_eq!(out.lines().count(), src.lines().count());
        assert!(out.starts_with("# a <<-EOT in a comment\nx = <<EOT\na\n\nb\nEOT\ny = 1"));
    }

    #[test]
    fn unterminated_heredoc_is_left_for_the_parser() {
        let src = "x = <<-EOT\n  a\n";
        assert_eq!(dedent_heredocs(src), src);
    }
}
