//! Evaluating a plan's configuration: inputs → locals, resources (expanded
//! by `count` / `for_each`), data sources and outputs.
//!
//! Evaluation is on demand with memoisation, in the order references need
//! it (a cycle is reported, never looped). What only a provider knows (a
//! generated password, a VM's address, an id) comes from the caller's
//! [`Provider`].

use std::collections::{BTreeMap, HashMap};

use hcl::expr::{BinaryOperator, Operation, UnaryOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Body, Expression, ObjectKey, TraversalOperator};

use super::EvalError;
use super::config::{Config, Resource};
use super::functions;
use super::value::{RUNTIME_MARK, Value, describe, runtime_part};

/// Deeper chains of references than this are refused (a hostile manifest
/// must not exhaust the stack).
const MAX_DEPTH: usize = 200;

/// The largest value a local, a resource or an output may hold (about
/// its bytes in memory): far above any real package, far below memory.
pub const MAX_VALUE_WEIGHT: usize = 16 * 1024 * 1024;

fn bounded(v: Result<Value, EvalError>) -> Result<Value, EvalError> {
    match v {
        Ok(v) if v.weight_exceeds(MAX_VALUE_WEIGHT) => Err(EvalError::msg(format!(
            "a value larger than {} MiB",
            MAX_VALUE_WEIGHT >> 20
        ))),
        other => other,
    }
}

/// Which instance of an expanded resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstanceKey {
    Single,
    Index(usize),
    Key(String),
}

impl InstanceKey {
    pub fn suffix(&self) -> String {
        match self {
            InstanceKey::Single => String::new(),
            InstanceKey::Index(i) => format!("[{i}]"),
            InstanceKey::Key(k) => format!("[{k:?}]"),
        }
    }
}

/// One evaluated resource instance: its arguments (nested blocks as lists
/// of objects) and the provider's computed attributes.
#[derive(Debug, Clone)]
pub struct ResourceInstance {
    /// `TYPE.NAME[KEY]`.
    pub address: String,
    pub key: InstanceKey,
    pub attrs: BTreeMap<String, Value>,
}

impl ResourceInstance {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.attrs.get(key)
    }
}

/// What a provider computes for a resource instance.
pub trait Provider {
    /// Attributes added to (or replacing) the evaluated arguments of one
    /// instance (`args` are those arguments).
    fn computed(
        &mut self,
        resource: &Resource,
        key: &InstanceKey,
        args: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>, EvalError>;
}

enum Slot {
    InProgress,
    Done(Result<Value, EvalError>),
}

/// Names in scope: `count`, `each`, `for` variables, dynamic iterators.
#[derive(Default, Clone)]
struct Scope {
    names: Vec<(String, Value)>,
}

impl Scope {
    fn with(&self, name: &str, v: Value) -> Scope {
        let mut s = self.clone();
        s.names.push((name.to_string(), v));
        s
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.names
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// Evaluates one configuration with one set of inputs.
pub struct Evaluator<'a, P: Provider> {
    cfg: &'a Config,
    files: Option<&'a crate::PackageFiles>,
    vars: BTreeMap<String, Value>,
    provider: P,
    locals: HashMap<String, Slot>,
    resources: HashMap<String, Slot>,
    instances: HashMap<String, Vec<ResourceInstance>>,
    depth: usize,
}

impl<'a, P: Provider> Evaluator<'a, P> {
    /// `inputs` are the values given for variables (already converted to
    /// their types, see [`convert`]); the others take their defaults.
    pub fn new(
        cfg: &'a Config,
        files: Option<&'a crate::PackageFiles>,
        inputs: &BTreeMap<String, Value>,
        provider: P,
    ) -> Result<Self, EvalError> {
        let mut ev = Evaluator {
            cfg,
            files,
            vars: BTreeMap::new(),
            provider,
            locals: HashMap::new(),
            resources: HashMap::new(),
            instances: HashMap::new(),
            depth: 0,
        };
        let mut missing = Vec::new();
        for v in &cfg.variables {
            let value = match (inputs.get(&v.name), &v.default) {
                (Some(given), _) => given.clone(),
                (None, Some(default)) => ev
                    .eval(default, &Scope::default())
                    .map_err(|e| e.at(format!("{} variable {:?} default", v.origin, v.name)))?,
                (None, None) => {
                    missing.push(v.name.clone());
                    continue;
                }
            };
            let value = match &v.ty {
                Some(ty) => convert(&value, ty)
                    .map_err(|e| e.at(format!("{} variable {:?}", v.origin, v.name)))?,
                None => value,
            };
            ev.vars.insert(v.name.clone(), value);
        }
        if !missing.is_empty() {
            return Err(EvalError::msg(format!(
                "no value for variable{} {} (give --var NAME=VALUE)",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            )));
        }
        Ok(ev)
    }

    pub fn provider(&self) -> &P {
        &self.provider
    }

    pub fn into_provider(self) -> P {
        self.provider
    }

    pub fn variable(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    /// The instances of a resource or data source (`TYPE.NAME` or
    /// `data.TYPE.NAME`), evaluating it if needed.
    pub fn instances(&mut self, address: &str) -> Result<Vec<ResourceInstance>, EvalError> {
        self.resource_value(address)?;
        Ok(self.instances.get(address).cloned().unwrap_or_default())
    }

    /// An output's value.
    pub fn output(&mut self, name: &str) -> Result<Value, EvalError> {
        let cfg = self.cfg;
        let Some(o) = cfg.outputs.iter().find(|o| o.name == name) else {
            return Err(EvalError::msg(format!("no output {name:?}")));
        };
        bounded(self.eval(&o.value, &Scope::default()))
            .map_err(|e| e.at(format!("{} output {name:?}", o.origin)))
    }

    /// Evaluates an expression at the top level (no `count`/`each`).
    pub fn eval_top(&mut self, e: &Expression) -> Result<Value, EvalError> {
        self.eval(e, &Scope::default())
    }

    fn local(&mut self, name: &str) -> Result<Value, EvalError> {
        match self.locals.get(name) {
            Some(Slot::Done(r)) => return r.clone(),
            Some(Slot::InProgress) => {
                return Err(EvalError::msg(format!("local.{name} refers to itself")));
            }
            None => {}
        }
        let cfg = self.cfg;
        let Some(l) = cfg.locals.iter().find(|l| l.name == name) else {
            return Err(EvalError::msg(format!("no local value {name:?}")));
        };
        self.locals.insert(name.to_string(), Slot::InProgress);
        let r = bounded(self.nested(|ev| ev.eval(&l.expr, &Scope::default())))
            .map_err(|e| e.at(format!("{} local.{name}", l.origin)));
        self.locals.insert(name.to_string(), Slot::Done(r.clone()));
        r
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, EvalError>,
    ) -> Result<T, EvalError> {
        if self.depth >= MAX_DEPTH {
            return Err(EvalError::msg(format!(
                "references nested more than {MAX_DEPTH} deep"
            )));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    /// The whole value of a resource: an object, a list (`count`) or a map
    /// (`for_each`).
    fn resource_value(&mut self, address: &str) -> Result<Value, EvalError> {
        match self.resources.get(address) {
            Some(Slot::Done(r)) => return r.clone(),
            Some(Slot::InProgress) => {
                return Err(EvalError::msg(format!("{address} refers to itself")));
            }
            None => {}
        }
        let cfg = self.cfg;
        let Some(res) = cfg.resource(address) else {
            return Err(EvalError::msg(format!("no resource {address}")));
        };
        self.resources.insert(address.to_string(), Slot::InProgress);
        let r = self
            .nested(|ev| ev.expand(res))
            .map_err(|e| e.at(format!("{} {address}", res.origin)));
        let value = r.map(|instances| {
            let value = match instances.first().map(|i| &i.key) {
                Some(InstanceKey::Single) => Value::Map(instances[0].attrs.clone()),
                Some(InstanceKey::Key(_)) => Value::Map(
                    instances
                        .iter()
                        .map(|i| {
                            let InstanceKey::Key(k) = &i.key else {
                                return (String::new(), Value::Null);
                            };
                            (k.clone(), Value::Map(i.attrs.clone()))
                        })
                        .collect(),
                ),
                _ => Value::List(
                    instances
                        .iter()
                        .map(|i| Value::Map(i.attrs.clone()))
                        .collect(),
                ),
            };
            // `for_each` over an empty map is an empty map, `count = 0`
            // an empty list: both index-fail the same way.
            self.instances.insert(address.to_string(), instances);
            value
        });
        self.resources
            .insert(address.to_string(), Slot::Done(value.clone()));
        value
    }

    fn expand(&mut self, res: &Resource) -> Result<Vec<ResourceInstance>, EvalError> {
        let attr = |k: &str| {
            res.body
                .attributes()
                .find(|a| a.key.as_str() == k)
                .map(|a| &a.expr)
        };
        let top = Scope::default();
        let keys: Vec<(InstanceKey, Scope)> = if let Some(count) = attr("count") {
            let n = self
                .eval(count, &top)
                .and_then(|v| v.as_index())
                .map_err(|e| e.at("count"))?;
            if n > 1000 {
                return Err(EvalError::msg(format!("count = {n}: at most 1000")));
            }
            (0..n)
                .map(|i| {
                    let mut m = BTreeMap::new();
                    m.insert("index".to_string(), Value::Number(i as f64));
                    (InstanceKey::Index(i), top.with("count", Value::Map(m)))
                })
                .collect()
        } else if let Some(fe) = attr("for_each") {
            let v = self.eval(fe, &top).map_err(|e| e.at("for_each"))?;
            let pairs: Vec<(String, Value)> = match v {
                Value::Map(m) => m.into_iter().collect(),
                Value::List(l) => {
                    let mut out = Vec::new();
                    for item in l {
                        let k = item.known_str("for_each")?;
                        out.push((k.clone(), Value::String(k)));
                    }
                    out.sort_by(|a, b| a.0.cmp(&b.0));
                    out.dedup_by(|a, b| a.0 == b.0);
                    out
                }
                other => {
                    return Err(EvalError::msg(format!(
                        "for_each: expected a map or a set of strings, found {}",
                        describe(&other)
                    )));
                }
            };
            if pairs.len() > 1000 {
                return Err(EvalError::msg("for_each: at most 1000 instances"));
            }
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let mut m = BTreeMap::new();
                    m.insert("key".to_string(), Value::String(k.clone()));
                    m.insert("value".to_string(), v);
                    (InstanceKey::Key(k), top.with("each", Value::Map(m)))
                })
                .collect()
        } else {
            vec![(InstanceKey::Single, top)]
        };
        let mut out = Vec::new();
        for (key, scope) in keys {
            let mut attrs = self.body(&res.body, &scope)?;
            if bounded(Ok(Value::Map(attrs.clone()))).is_err() {
                return Err(EvalError::msg(format!(
                    "its arguments are larger than {} MiB",
                    MAX_VALUE_WEIGHT >> 20
                )));
            }
            let computed = self.provider.computed(res, &key, &attrs)?;
            attrs.extend(computed);
            out.push(ResourceInstance {
                address: format!("{}{}", res.address(), key.suffix()),
                key,
                attrs,
            });
        }
        Ok(out)
    }

    /// A block body as an object: attributes, and nested blocks as lists of
    /// objects under their names (`dynamic` blocks expanded).
    fn body(&mut self, body: &Body, scope: &Scope) -> Result<BTreeMap<String, Value>, EvalError> {
        const META: &[&str] = &["count", "for_each", "depends_on", "provider"];
        let mut out = BTreeMap::new();
        for a in body.attributes() {
            let key = a.key.as_str();
            if META.contains(&key) {
                continue;
            }
            let v = self
                .eval(&a.expr, scope)
                .map_err(|e| e.at(key.to_string()))?;
            out.insert(key.to_string(), v);
        }
        for b in body.blocks() {
            let name = b.identifier.as_str();
            if matches!(name, "lifecycle" | "provisioner" | "connection") {
                continue;
            }
            if name == "dynamic" {
                let Some(label) = b.labels.first().map(|l| l.as_str().to_string()) else {
                    continue;
                };
                let fe = b
                    .body
                    .attributes()
                    .find(|a| a.key.as_str() == "for_each")
                    .map(|a| a.expr.clone())
                    .ok_or_else(|| EvalError::msg(format!("dynamic {label:?}: no for_each")))?;
                let iterator = match b.body.attributes().find(|a| a.key.as_str() == "iterator") {
                    Some(a) => match &a.expr {
                        Expression::Variable(v) => v.to_string(),
                        _ => label.clone(),
                    },
                    None => label.clone(),
                };
                let Some(content) = b.body.blocks().find(|c| c.identifier.as_str() == "content")
                else {
                    continue;
                };
                let items = self.eval(&fe, scope)?;
                let pairs = items.into_pairs(&format!("dynamic {label:?} for_each"))?;
                for (k, v) in pairs {
                    let mut it = BTreeMap::new();
                    it.insert("key".to_string(), k);
                    it.insert("value".to_string(), v);
                    let inner = self.body(&content.body, &scope.with(&iterator, Value::Map(it)))?;
                    push_block(&mut out, &label, Value::Map(inner));
                }
                continue;
            }
            let inner = self
                .body(&b.body, scope)
                .map_err(|e| e.at(name.to_string()))?;
            push_block(&mut out, name, Value::Map(inner));
        }
        Ok(out)
    }

    fn eval(&mut self, e: &Expression, scope: &Scope) -> Result<Value, EvalError> {
        self.nested(|ev| ev.eval_here(e, scope))
    }

    fn eval_here(&mut self, e: &Expression, scope: &Scope) -> Result<Value, EvalError> {
        Ok(match e {
            Expression::Null => Value::Null,
            Expression::Bool(b) => Value::Bool(*b),
            Expression::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
            Expression::String(s) => Value::String(s.clone()),
            Expression::Array(items) => Value::List(
                items
                    .iter()
                    .map(|i| self.eval(i, scope))
                    .collect::<Result<_, _>>()?,
            ),
            Expression::Object(o) => {
                let mut m = BTreeMap::new();
                for (k, v) in o {
                    let key = match k {
                        ObjectKey::Identifier(id) => id.to_string(),
                        ObjectKey::Expression(Expression::Variable(v)) => v.to_string(),
                        ObjectKey::Expression(e) => self.eval(e, scope)?.known_str("object key")?,
                        _ => continue,
                    };
                    m.insert(key, self.eval(v, scope)?);
                }
                Value::Map(m)
            }
            Expression::TemplateExpr(t) => {
                let tpl = Template::from_expr(t.as_ref())
                    .map_err(|e| EvalError::msg(format!("template: {e}")))?;
                Value::String(self.template(&tpl, scope)?)
            }
            Expression::Variable(v) => match scope.get(v.as_str()) {
                Some(val) => val.clone(),
                None => {
                    return Err(EvalError::msg(format!(
                        "{} is not a value here (a reference needs an attribute, e.g. var.NAME)",
                        v.as_str()
                    )));
                }
            },
            Expression::Traversal(t) => self.traversal(&t.expr, &t.operators, scope)?,
            Expression::FuncCall(f) => {
                if !f.name.namespace.is_empty() {
                    return Err(EvalError::msg(format!(
                        "provider functions ({}) are not supported",
                        f.name
                    )));
                }
                let name = f.name.name.as_str();
                match name {
                    // Lazy: an argument that fails is skipped, not fatal.
                    "try" => {
                        let mut last = None;
                        for a in &f.args {
                            match self.eval(a, scope) {
                                Ok(v) => return Ok(v),
                                Err(e) => last = Some(e),
                            }
                        }
                        return Err(last.unwrap_or_else(|| EvalError::msg("try() needs arguments")));
                    }
                    "can" => {
                        let [a] = f.args.as_slice() else {
                            return Err(EvalError::msg("can() takes one argument"));
                        };
                        return Ok(Value::Bool(self.eval(a, scope).is_ok()));
                    }
                    "templatefile" => {
                        let [path, vars] = f.args.as_slice() else {
                            return Err(EvalError::msg("templatefile() takes a path and a map"));
                        };
                        let path = self.eval(path, scope)?.known_str(name)?;
                        let vars = functions::map(&self.eval(vars, scope)?)?;
                        let text = functions::read_file(self.files, &self.cfg.dir, &path)?;
                        return self
                            .template_file(&text, &vars)
                            .map_err(|e| e.at(format!("templatefile({path:?})")));
                    }
                    _ => {}
                }
                let mut args: Vec<Value> = f
                    .args
                    .iter()
                    .map(|a| self.eval(a, scope))
                    .collect::<Result<_, _>>()?;
                if f.expand_final {
                    if let Some(Value::List(last)) = args.pop() {
                        args.extend(last);
                    } else {
                        return Err(EvalError::msg(format!(
                            "{name}(...): the expanded argument is not a list"
                        )));
                    }
                }
                functions::call(name, args, self.files, &self.cfg.dir)
                    .map_err(|e| e.at(format!("{name}()")))?
            }
            Expression::Parenthesis(e) => self.eval(e, scope)?,
            Expression::Conditional(c) => {
                let cond = self.eval(&c.cond_expr, scope)?;
                if let Value::String(s) = &cond
                    && s.contains(RUNTIME_MARK)
                {
                    return Err(EvalError::msg(format!(
                        "a condition is known only once the VMs run ({})",
                        runtime_part(s)
                    )));
                }
                if cond.as_bool()? {
                    self.eval(&c.true_expr, scope)?
                } else {
                    self.eval(&c.false_expr, scope)?
                }
            }
            Expression::Operation(op) => self.operation(op, scope)?,
            Expression::ForExpr(f) => {
                let coll = self.eval(&f.collection_expr, scope)?;
                let pairs = coll.into_pairs("for")?;
                let mut list = Vec::new();
                let mut map: BTreeMap<String, Value> = BTreeMap::new();
                for (k, v) in pairs {
                    let mut s = scope.with(f.value_var.as_str(), v);
                    if let Some(kv) = &f.key_var {
                        s = s.with(kv.as_str(), k);
                    }
                    if let Some(c) = &f.cond_expr
                        && !self.eval(c, &s)?.as_bool()?
                    {
                        continue;
                    }
                    let value = self.eval(&f.value_expr, &s)?;
                    match &f.key_expr {
                        Some(ke) => {
                            let key = self.eval(ke, &s)?.known_str("for key")?;
                            if f.grouping {
                                if let Value::List(l) =
                                    map.entry(key).or_insert_with(|| Value::List(Vec::new()))
                                {
                                    l.push(value);
                                }
                            } else if map.insert(key.clone(), value).is_some() {
                                return Err(EvalError::msg(format!(
                                    "for: duplicate key {key:?} (use ... to group)"
                                )));
                            }
                        }
                        None => list.push(value),
                    }
                }
                if f.key_expr.is_some() {
                    Value::Map(map)
                } else {
                    Value::List(list)
                }
            }
            _ => return Err(EvalError::msg("an expression ibkit does not evaluate")),
        })
    }

    fn traversal(
        &mut self,
        root: &Expression,
        ops: &[TraversalOperator],
        scope: &Scope,
    ) -> Result<Value, EvalError> {
        let attr = |i: usize| match ops.get(i) {
            Some(TraversalOperator::GetAttr(id)) => Some(id.as_str()),
            _ => None,
        };
        let (value, used) = match root {
            Expression::Variable(v) => match (v.as_str(), scope.get(v.as_str())) {
                (_, Some(val)) => (val.clone(), 0),
                ("var", None) => {
                    let name = attr(0).ok_or_else(|| EvalError::msg("var needs .NAME"))?;
                    let val = self
                        .vars
                        .get(name)
                        .cloned()
                        .ok_or_else(|| EvalError::msg(format!("no variable {name:?}")))?;
                    (val, 1)
                }
                ("local", None) => {
                    let name = attr(0).ok_or_else(|| EvalError::msg("local needs .NAME"))?;
                    (self.local(name)?, 1)
                }
                ("path", None) => (Value::String(self.cfg.dir.clone()), 1),
                ("terraform", None) => (Value::str("default"), 1),
                ("count" | "each" | "self", None) => {
                    return Err(EvalError::msg(format!(
                        "{} is not available here",
                        v.as_str()
                    )));
                }
                ("data", None) => {
                    let (Some(ty), Some(name)) = (attr(0), attr(1)) else {
                        return Err(EvalError::msg("data needs .TYPE.NAME"));
                    };
                    (self.resource_value(&format!("data.{ty}.{name}"))?, 2)
                }
                (ty, None) => {
                    let name = attr(0).ok_or_else(|| {
                        EvalError::msg(format!("{ty} is not a value here (a resource needs .NAME)"))
                    })?;
                    (self.resource_value(&format!("{ty}.{name}"))?, 1)
                }
            },
            other => (self.eval(other, scope)?, 0),
        };
        self.apply(value, &ops[used..], scope)
    }

    fn apply(
        &mut self,
        mut value: Value,
        ops: &[TraversalOperator],
        scope: &Scope,
    ) -> Result<Value, EvalError> {
        for (i, op) in ops.iter().enumerate() {
            value = match op {
                TraversalOperator::GetAttr(id) => get(value, id.as_str())?,
                TraversalOperator::Index(e) => {
                    let key = self.eval(e, scope)?;
                    index(value, &key)?
                }
                TraversalOperator::LegacyIndex(n) => index(value, &Value::Number(*n as f64))?,
                TraversalOperator::AttrSplat | TraversalOperator::FullSplat => {
                    let items = match value {
                        Value::List(l) => l,
                        Value::Null => Vec::new(),
                        other => vec![other],
                    };
                    let rest = &ops[i + 1..];
                    let mut out = Vec::new();
                    for item in items {
                        out.push(self.apply(item, rest, scope)?);
                    }
                    return Ok(Value::List(out));
                }
            };
        }
        Ok(value)
    }

    /// A template file: its names are only `vars` (Terraform's rule).
    fn template_file(
        &mut self,
        text: &str,
        vars: &BTreeMap<String, Value>,
    ) -> Result<Value, EvalError> {
        let tpl: Template = text
            .parse()
            .map_err(|e| EvalError::msg(format!("template: {e}")))?;
        let mut scope = Scope::default();
        for (k, v) in vars {
            scope = scope.with(k, v.clone());
        }
        Ok(Value::String(self.template(&tpl, &scope)?))
    }

    fn template(&mut self, t: &Template, scope: &Scope) -> Result<String, EvalError> {
        let mut out = String::new();
        for el in t.elements() {
            match el {
                Element::Literal(s) => out.push_str(s),
                Element::Interpolation(i) => out.push_str(&self.eval(&i.expr, scope)?.to_text()?),
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(d) => {
                        if self.eval(&d.cond_expr, scope)?.as_bool()? {
                            out.push_str(&self.template(&d.true_template, scope)?);
                        } else if let Some(f) = &d.false_template {
                            out.push_str(&self.template(f, scope)?);
                        }
                    }
                    Directive::For(d) => {
                        let coll = self.eval(&d.collection_expr, scope)?;
                        let pairs = coll.into_pairs("%{ for }")?;
                        for (k, v) in pairs {
                            let mut s = scope.with(d.value_var.as_str(), v);
                            if let Some(kv) = &d.key_var {
                                s = s.with(kv.as_str(), k);
                            }
                            out.push_str(&self.template(&d.template, &s)?);
                        }
                    }
                },
            }
        }
        Ok(out)
    }

    fn operation(&mut self, op: &Operation, scope: &Scope) -> Result<Value, EvalError> {
        match op {
            Operation::Unary(u) => {
                let v = self.eval(&u.expr, scope)?;
                Ok(match u.operator {
                    UnaryOperator::Not => Value::Bool(!v.as_bool()?),
                    UnaryOperator::Neg => Value::Number(-v.as_number()?),
                })
            }
            Operation::Binary(b) => {
                use BinaryOperator as B;
                // && and || stop early, which also lets a guard protect
                // the right side (`length(x) > 0 && x[0] == …`).
                if matches!(b.operator, B::And | B::Or) {
                    let l = self.eval(&b.lhs_expr, scope)?.as_bool()?;
                    if (b.operator == B::And) != l {
                        return Ok(Value::Bool(l));
                    }
                    return Ok(Value::Bool(self.eval(&b.rhs_expr, scope)?.as_bool()?));
                }
                let l = self.eval(&b.lhs_expr, scope)?;
                let r = self.eval(&b.rhs_expr, scope)?;
                for side in [&l, &r] {
                    if let Value::String(s) = side
                        && s.contains(RUNTIME_MARK)
                    {
                        return Err(EvalError::msg(format!(
                            "an operand is known only once the VMs run ({})",
                            runtime_part(s)
                        )));
                    }
                }
                Ok(match b.operator {
                    B::Eq => Value::Bool(equal(&l, &r)),
                    B::NotEq => Value::Bool(!equal(&l, &r)),
                    B::Less => Value::Bool(l.as_number()? < r.as_number()?),
                    B::LessEq => Value::Bool(l.as_number()? <= r.as_number()?),
                    B::Greater => Value::Bool(l.as_number()? > r.as_number()?),
                    B::GreaterEq => Value::Bool(l.as_number()? >= r.as_number()?),
                    B::Plus => Value::Number(l.as_number()? + r.as_number()?),
                    B::Minus => Value::Number(l.as_number()? - r.as_number()?),
                    B::Mul => Value::Number(l.as_number()? * r.as_number()?),
                    B::Div => {
                        let d = r.as_number()?;
                        if d == 0.0 {
                            return Err(EvalError::msg("division by zero"));
                        }
                        Value::Number(l.as_number()? / d)
                    }
                    B::Mod => {
                        let d = r.as_number()?;
                        if d == 0.0 {
                            return Err(EvalError::msg("modulo by zero"));
                        }
                        Value::Number(l.as_number()? % d)
                    }
                    B::And | B::Or => Value::Null,
                })
            }
        }
    }
}

fn push_block(out: &mut BTreeMap<String, Value>, name: &str, v: Value) {
    match out
        .entry(name.to_string())
        .or_insert_with(|| Value::List(Vec::new()))
    {
        Value::List(l) => l.push(v),
        other => *other = Value::List(vec![v]),
    }
}

/// Equality as Terraform sees it for the values packages compare: a
/// number equals its text (`var.port == "80"` after a string input).
fn equal(l: &Value, r: &Value) -> bool {
    match (l, r) {
        (Value::Number(a), Value::String(b)) | (Value::String(b), Value::Number(a)) => {
            b.trim().parse::<f64>().is_ok_and(|b| b == *a)
        }
        _ => l == r,
    }
}

fn get(value: Value, key: &str) -> Result<Value, EvalError> {
    match value {
        Value::Map(mut m) => m
            .remove(key)
            .ok_or_else(|| EvalError::msg(format!("no attribute {key:?}"))),
        Value::Structured(mut r) => {
            if let ibkit_api::ReferenceTarget::Structured(path) = &mut r.target {
                path.push(key.to_string());
            }
            Ok(Value::Structured(r))
        }
        Value::List(_) => Err(EvalError::msg(format!(
            "a list has no attribute {key:?} (index it first, e.g. [0].{key}, or use [*].{key})"
        ))),
        other => Err(EvalError::msg(format!(
            "{} has no attribute {key:?}",
            describe(&other)
        ))),
    }
}

fn index(value: Value, key: &Value) -> Result<Value, EvalError> {
    match value {
        Value::List(mut l) => {
            let i = key.as_index()?;
            if i >= l.len() {
                return Err(EvalError::msg(format!(
                    "index {i} out of range (the list has {} element{})",
                    l.len(),
                    if l.len() == 1 { "" } else { "s" }
                )));
            }
            Ok(l.swap_remove(i))
        }
        Value::Map(mut m) => {
            let k = key.known_str("index")?;
            m.remove(&k)
                .ok_or_else(|| EvalError::msg(format!("no key {k:?}")))
        }
        Value::Structured(mut r) => {
            if let ibkit_api::ReferenceTarget::Structured(path) = &mut r.target {
                path.push(key.known_str("index")?);
            }
            Ok(Value::Structured(r))
        }
        other => Err(EvalError::msg(format!("cannot index {}", describe(&other)))),
    }
}

/// Converts a value to a variable's declared type (`string`, `number`,
/// `bool`, `list(…)`, `set(…)`, `map(…)`, `object(…)`, `any`). A string
/// given on the command line for a structured type is read as JSON.
pub fn convert(v: &Value, ty: &str) -> Result<Value, EvalError> {
    let ty = ty.trim();
    let base = ty.split('(').next().unwrap_or(ty).trim();
    match (base, v) {
        ("string", Value::String(_) | Value::Structured(_)) => Ok(v.clone()),
        ("string", Value::Number(_) | Value::Bool(_)) => Ok(Value::String(v.to_text()?)),
        ("number", _) => Ok(Value::Number(v.as_number()?)),
        ("bool", _) => Ok(Value::Bool(v.as_bool()?)),
        ("list" | "set" | "tuple" | "map" | "object", Value::String(s)) => {
            let json: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                EvalError::msg(format!("expected {ty} (as JSON), found {s:?}: {e}"))
            })?;
            convert(&Value::from_json(&json), ty)
        }
        ("list" | "set" | "tuple", Value::List(l)) => {
            let inner = ty
                .strip_prefix(base)
                .and_then(|r| r.trim().strip_prefix('('))
                .and_then(|r| r.strip_suffix(')'));
            let mut items = match inner {
                Some(inner) if base != "tuple" => l
                    .iter()
                    .map(|i| convert(i, inner))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => l.clone(),
            };
            if base == "set" {
                items.sort_by_key(|v| v.to_json().to_string());
                items.dedup();
            }
            Ok(Value::List(items))
        }
        ("map" | "object", Value::Map(_)) => Ok(v.clone()),
        ("any" | "", _) => Ok(v.clone()),
        (_, Value::Null) => Ok(Value::Null),
        _ => Err(EvalError::msg(format!(
            "expected {ty}, found {}",
            describe(v)
        ))),
    }
}
