//! A plan's Terraform configuration: every `deployment/*.tf` file of the
//! plan read into variables, locals, resources, data sources and outputs,
//! each with its file and line.

use hcl::{Body, Expression};

use super::EvalError;
use super::heredoc::dedent_heredocs;
use crate::PackageFiles;

/// Where a block was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: Option<u32>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    /// The type constraint as written (`string`, `list(number)`, …).
    pub ty: Option<String>,
    pub default: Option<Expression>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub expr: Expression,
    pub origin: Origin,
}

/// A `resource` or `data` block.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `data` sources are addressed `data.TYPE.NAME`.
    pub data: bool,
    pub kind: String,
    pub name: String,
    pub body: Body,
    pub origin: Origin,
}

impl Resource {
    /// `TYPE.NAME` or `data.TYPE.NAME`.
    pub fn address(&self) -> String {
        if self.data {
            format!("data.{}.{}", self.kind, self.name)
        } else {
            format!("{}.{}", self.kind, self.name)
        }
    }

    /// The `depends_on` addresses as written.
    pub fn depends_on(&self) -> Vec<String> {
        let Some(attr) = self
            .body
            .attributes()
            .find(|a| a.key.as_str() == "depends_on")
        else {
            return Vec::new();
        };
        let Expression::Array(items) = &attr.expr else {
            return Vec::new();
        };
        items.iter().filter_map(address_of).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub value: Expression,
    pub sensitive: bool,
    pub description: Option<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The plan's deployment directory inside the package
    /// (`plans/P/deployment`), for `file()` and `path.module`.
    pub dir: String,
    pub variables: Vec<Variable>,
    pub locals: Vec<Local>,
    /// Resources and data sources in file order.
    pub resources: Vec<Resource>,
    pub outputs: Vec<Output>,
}

impl Config {
    /// Reads every `.tf` file of `plans/PLAN/deployment/`.
    pub fn load(pkg: &PackageFiles, plan: &str) -> Result<Config, EvalError> {
        let dir = format!("plans/{plan}/deployment");
        let mut cfg = Config {
            dir: dir.clone(),
            ..Config::default()
        };
        let mut files: Vec<&str> = pkg
            .under(&dir, true)
            .filter(|p| p.ends_with(".tf"))
            .collect();
        files.sort_unstable();
        if files.is_empty() {
            return Err(EvalError::msg(format!("{dir}: no .tf file")));
        }
        for file in files {
            let text = pkg
                .text(file)
                .ok_or_else(|| EvalError::msg(format!("{file}: missing")))?
                .map_err(|e| EvalError::msg(format!("{file}: not UTF-8 ({e})")))?;
            cfg.add_file(file, text)?;
        }
        Ok(cfg)
    }

    /// Adds one file's blocks.
    pub fn add_file(&mut self, file: &str, text: &str) -> Result<(), EvalError> {
        let src = dedent_heredocs(text);
        let body = super::parse_body(text).map_err(|e| EvalError::msg(format!("{file}: {e}")))?;
        let origin = |ident: &str, labels: &[&str]| Origin {
            file: file.to_string(),
            line: crate::lint::terraform::block_line(&src, ident, labels),
        };
        for block in body.blocks() {
            let labels: Vec<&str> = block.labels.iter().map(|l| l.as_str()).collect();
            match (block.identifier.as_str(), labels.as_slice()) {
                ("variable", [name]) => {
                    let attr = |k: &str| block.body.attributes().find(|a| a.key.as_str() == k);
                    self.variables.push(Variable {
                        name: name.to_string(),
                        ty: attr("type").map(|a| type_text(&a.expr)),
                        default: attr("default").map(|a| a.expr.clone()),
                        origin: origin("variable", &[name]),
                    });
                }
                ("locals", []) => {
                    for a in block.body.attributes() {
                        self.locals.push(Local {
                            name: a.key.to_string(),
                            expr: a.expr.clone(),
                            origin: Origin {
                                file: file.to_string(),
                                line: attribute_line(&src, a.key.as_str()),
                            },
                        });
                    }
                }
                (kind @ ("resource" | "data"), [ty, name]) => self.resources.push(Resource {
                    data: kind == "data",
                    kind: ty.to_string(),
                    name: name.to_string(),
                    body: block.body.clone(),
                    origin: origin(kind, &[ty, name]),
                }),
                ("output", [name]) => {
                    let attr = |k: &str| block.body.attributes().find(|a| a.key.as_str() == k);
                    let Some(value) = attr("value") else {
                        return Err(EvalError::msg(format!(
                            "{}: output {name:?} has no value",
                            origin("output", &[name])
                        )));
                    };
                    self.outputs.push(Output {
                        name: name.to_string(),
                        value: value.expr.clone(),
                        sensitive: matches!(
                            attr("sensitive").map(|a| &a.expr),
                            Some(Expression::Bool(true))
                        ),
                        description: match attr("description").map(|a| &a.expr) {
                            Some(Expression::String(s)) => Some(s.clone()),
                            _ => None,
                        },
                        origin: origin("output", &[name]),
                    });
                }
                // terraform {}, provider "x" {}, moved/import blocks: no
                // effect on what is deployed.
                _ => {}
            }
        }
        Ok(())
    }

    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.variables.iter().find(|v| v.name == name)
    }

    pub fn resource(&self, address: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.address() == address)
    }
}

/// `TYPE.NAME` or `data.TYPE.NAME` of a `depends_on` item or a reference
/// (`local.NAME` for a local value, which callers follow).
pub fn address_of(e: &Expression) -> Option<String> {
    let Expression::Traversal(t) = e else {
        return None;
    };
    let Expression::Variable(root) = &t.expr else {
        return None;
    };
    let attrs: Vec<&str> = t
        .operators
        .iter()
        .map_while(|op| match op {
            hcl::TraversalOperator::GetAttr(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    match (root.as_str(), attrs.as_slice()) {
        ("data", [ty, name, ..]) => Some(format!("data.{ty}.{name}")),
        ("local", [name, ..]) => Some(format!("local.{name}")),
        ("var" | "count" | "each" | "path" | "terraform" | "self", _) => None,
        (ty, [name, ..]) => Some(format!("{ty}.{name}")),
        _ => None,
    }
}

/// Every resource address an expression refers to.
pub fn references(e: &Expression, out: &mut Vec<String>) {
    use hcl::template::{Directive, Element, Template};
    fn template(t: &Template, out: &mut Vec<String>) {
        for el in t.elements() {
            match el {
                Element::Literal(_) => {}
                Element::Interpolation(i) => references(&i.expr, out),
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(d) => {
                        references(&d.cond_expr, out);
                        template(&d.true_template, out);
                        if let Some(f) = &d.false_template {
                            template(f, out);
                        }
                    }
                    Directive::For(d) => {
                        references(&d.collection_expr, out);
                        template(&d.template, out);
                    }
                },
            }
        }
    }
    match e {
        Expression::Traversal(t) => {
            if let Some(a) = address_of(e) {
                out.push(a);
            }
            references(&t.expr, out);
            for op in &t.operators {
                if let hcl::TraversalOperator::Index(i) = op {
                    references(i, out);
                }
            }
        }
        Expression::Array(a) => a.iter().for_each(|e| references(e, out)),
        Expression::Object(o) => o.values().for_each(|e| references(e, out)),
        Expression::TemplateExpr(t) => {
            if let Ok(t) = Template::from_expr(t) {
                template(&t, out);
            }
        }
        Expression::FuncCall(f) => f.args.iter().for_each(|e| references(e, out)),
        Expression::Parenthesis(e) => references(e, out),
        Expression::Conditional(c) => {
            references(&c.cond_expr, out);
            references(&c.true_expr, out);
            references(&c.false_expr, out);
        }
        Expression::Operation(op) => match op.as_ref() {
            hcl::expr::Operation::Unary(u) => references(&u.expr, out),
            hcl::expr::Operation::Binary(b) => {
                references(&b.lhs_expr, out);
                references(&b.rhs_expr, out);
            }
        },
        Expression::ForExpr(f) => {
            references(&f.collection_expr, out);
            if let Some(k) = &f.key_expr {
                references(k, out);
            }
            references(&f.value_expr, out);
            if let Some(c) = &f.cond_expr {
                references(c, out);
            }
        }
        _ => {}
    }
}

/// Every resource address a block body refers to (attributes and nested
/// blocks, `depends_on` included).
pub fn body_references(body: &Body, out: &mut Vec<String>) {
    for a in body.attributes() {
        references(&a.expr, out);
    }
    for b in body.blocks() {
        body_references(&b.body, out);
    }
}

fn type_text(e: &Expression) -> String {
    match e {
        Expression::Variable(v) => v.to_string(),
        Expression::FuncCall(f) => {
            let args: Vec<String> = f.args.iter().map(type_text).collect();
            format!("{}({})", f.name.name, args.join(", "))
        }
        Expression::String(s) => s.clone(),
        _ => "any".into(),
    }
}

fn attribute_line(src: &str, key: &str) -> Option<u32> {
    let re = regex::Regex::new(&format!(r"(?m)^[ \t]*{}[ \t]*=", regex::escape(key))).ok()?;
    let at = re.find(src)?.start();
    u32::try_from(src[..at].matches('\n').count() + 1).ok()
}
