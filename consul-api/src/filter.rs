//! Consul's `?filter=` expressions (the go-bexpr language), evaluated over
//! the JSON of each result entry.
//!
//! Supported: selectors as dotted field paths with `["key"]` indexing
//! (`Service.Tags`, `Node.Meta.env`, `Service.Meta["version"]`,
//! `Checks.Status`, where a path through a list reaches every element);
//! values as `"double"`, `` `raw` `` or bare words/numbers; the matching
//! operators `==`, `!=`, `in`, `not in`, `contains`, `not contains`,
//! `is empty`, `is not empty`, `matches`, `not matches`; and `and`, `or`,
//! `not`, parentheses. A selector naming a field the entries do not have,
//! an unknown operator or a bad regex is refused with the offending part
//! named (400), never ignored.
//!
//! Semantics follow bexpr: `==`/`matches` on a selector that reaches several
//! values (through a list) hold when any value does; `!=`/`not matches` are
//! their negations; `X in Sel` holds when `Sel` is a list holding `X`, a map
//! with key `X`, or a string containing `X`; `is empty` holds for a missing
//! value, empty string, list or map.
//!
//! Limits (outside input): the text is at most [`MAX_LEN`] bytes, nests at
//! most [`MAX_DEPTH`] levels of parentheses and `not`, holds at most
//! [`MAX_TERMS`] matching terms and [`MAX_REGEXES`] regular expressions, and
//! each regular expression compiles within [`REGEX_SIZE`] bytes. Parsing recurses only on nesting, so the
//! depth limit bounds the stack; `and`/`or` chains are flat lists.
//! Regular expressions are compiled once, when the filter is parsed.

use std::sync::Arc;

use serde_json::Value;

/// Longest filter text accepted, in bytes.
pub(crate) const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses and `not` accepted.
pub(crate) const MAX_DEPTH: usize = 32;
/// Most matching terms (`Sel == v`, `v in Sel`, ...) in one filter.
pub(crate) const MAX_TERMS: usize = 256;
/// Compiled size limit of one regular expression (and of its lazy DFA
/// cache), in bytes.
pub(crate) const REGEX_SIZE: usize = 64 * 1024;
/// Most `matches` / `not matches` terms in one filter: with
/// [`REGEX_SIZE`], a filter (held as long as its blocking query) holds at
/// most 1 MiB of automata.
pub(crate) const MAX_REGEXES: usize = 8;

/// A parsed filter.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// Every one holds (at least two).
    And(Vec<Expr>),
    /// Any one holds (at least two).
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Match(Selector, Op),
    In(String, Selector, bool),
    Empty(Selector, bool),
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Eq(String),
    Ne(String),
    Matches(Arc<regex::Regex>),
    NotMatches(Arc<regex::Regex>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Selector(Vec<String>);

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Sym(&'static str),
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '`' {
            let mut v = String::new();
            i += 1;
            loop {
                match cs.get(i) {
                    None => return Err(format!("unterminated string starting with {c}")),
                    Some(&e) if e == c => break,
                    Some('\\') if c == '"' => {
                        i += 1;
                        match cs.get(i) {
                            Some('n') => v.push('\n'),
                            Some('t') => v.push('\t'),
                            Some(&x) => v.push(x),
                            None => return Err("unterminated string".into()),
                        }
                    }
                    Some(&x) => v.push(x),
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(v));
        } else if c == '=' && cs.get(i + 1) == Some(&'=') {
            out.push(Tok::Sym("=="));
            i += 2;
        } else if c == '!' && cs.get(i + 1) == Some(&'=') {
            out.push(Tok::Sym("!="));
            i += 2;
        } else if c == '(' || c == ')' || c == '[' || c == ']' || c == '.' {
            out.push(Tok::Sym(match c {
                '(' => "(",
                ')' => ")",
                '[' => "[",
                ']' => "]",
                _ => ".",
            }));
            i += 1;
        } else if c.is_alphanumeric() || c == '_' || c == '-' || c == '/' || c == ':' {
            let start = i;
            while i < cs.len()
                && (cs[i].is_alphanumeric() || matches!(cs[i], '_' | '-' | '/' | ':'))
            {
                i += 1;
            }
            out.push(Tok::Word(cs[start..i].iter().collect()));
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    /// Current nesting of parentheses and `not`.
    depth: usize,
    terms: usize,
    regexes: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }
    fn peek_word_at(&self, off: usize, w: &str) -> bool {
        matches!(self.toks.get(self.pos + off), Some(Tok::Word(x)) if x == w)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut list = vec![self.and()?];
        while self.peek_word("or") {
            self.pos += 1;
            list.push(self.and()?);
        }
        Ok(if list.len() == 1 {
            list.swap_remove(0)
        } else {
            Expr::Or(list)
        })
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut list = vec![self.not()?];
        while self.peek_word("and") {
            self.pos += 1;
            list.push(self.not()?);
        }
        Ok(if list.len() == 1 {
            list.swap_remove(0)
        } else {
            Expr::And(list)
        })
    }

    /// Enters one nesting level (refused past [`MAX_DEPTH`]).
    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "the filter nests deeper than {MAX_DEPTH} levels of parentheses and 'not' (limit)"
            ));
        }
        Ok(())
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            self.deeper()?;
            let e = Expr::Not(Box::new(self.not()?));
            self.depth -= 1;
            return Ok(e);
        }
        if self.peek() == Some(&Tok::Sym("(")) {
            self.pos += 1;
            self.deeper()?;
            let e = self.or()?;
            if self.next() != Some(Tok::Sym(")")) {
                return Err("missing closing parenthesis".into());
            }
            self.depth -= 1;
            return Ok(e);
        }
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(format!(
                "the filter has more than {MAX_TERMS} terms (limit)"
            ));
        }
        self.matcher()
    }

    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Str(s)) | Some(Tok::Word(s)) => Ok(s),
            Some(Tok::Sym(s)) => Err(format!("expected a value, found {s:?}")),
            None => Err("expected a value at the end of the filter".into()),
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let mut parts = Vec::new();
        match self.next() {
            Some(Tok::Word(w)) if w.starts_with(|c: char| c.is_alphabetic() || c == '_') => {
                parts.push(w)
            }
            other => return Err(format!("expected a selector, found {other:?}")),
        }
        loop {
            match self.peek() {
                Some(Tok::Sym(".")) => {
                    self.pos += 1;
                    match self.next() {
                        Some(Tok::Word(w)) => parts.push(w),
                        other => {
                            return Err(format!(
                                "expected a field name after '.', found {other:?}"
                            ));
                        }
                    }
                }
                Some(Tok::Sym("[")) => {
                    self.pos += 1;
                    let key = self.value()?;
                    if self.next() != Some(Tok::Sym("]")) {
                        return Err("missing ']' in selector".into());
                    }
                    parts.push(key);
                }
                _ => return Ok(Selector(parts)),
            }
        }
    }

    fn matcher(&mut self) -> Result<Expr, String> {
        // `value in Selector` / `value not in Selector`
        let value_first = self.peek_word_at(1, "in")
            || (self.peek_word_at(1, "not") && self.peek_word_at(2, "in"))
            || matches!(self.peek(), Some(Tok::Str(_)));
        if value_first {
            let v = self.value()?;
            let negate = self.peek_word("not");
            if negate {
                self.pos += 1;
            }
            if !self.peek_word("in") {
                return Err(format!("expected 'in' after value {v:?}"));
            }
            self.pos += 1;
            let sel = self.selector()?;
            return Ok(Expr::In(v, sel, negate));
        }
        let sel = self.selector()?;
        match self.next() {
            Some(Tok::Sym("==")) => Ok(Expr::Match(sel, Op::Eq(self.value()?))),
            Some(Tok::Sym("!=")) => Ok(Expr::Match(sel, Op::Ne(self.value()?))),
            Some(Tok::Word(w)) if w == "is" => {
                let negate = self.peek_word("not");
                if negate {
                    self.pos += 1;
                }
                if !self.peek_word("empty") {
                    return Err(format!("expected 'empty' after '{sel} is'"));
                }
                self.pos += 1;
                Ok(Expr::Empty(sel, negate))
            }
            Some(Tok::Word(w)) if w == "contains" => Ok(Expr::In(self.value()?, sel, false)),
            Some(Tok::Word(w)) if w == "matches" => self.regex(sel, false),
            Some(Tok::Word(w)) if w == "not" => match self.next() {
                Some(Tok::Word(x)) if x == "contains" => Ok(Expr::In(self.value()?, sel, true)),
                Some(Tok::Word(x)) if x == "matches" => self.regex(sel, true),
                other => Err(format!("unsupported operator 'not {other:?}' after {sel}")),
            },
            Some(other) => Err(format!("unsupported operator {other:?} after {sel}")),
            None => Err(format!("missing operator after {sel}")),
        }
    }

    fn regex(&mut self, sel: Selector, negate: bool) -> Result<Expr, String> {
        self.regexes += 1;
        if self.regexes > MAX_REGEXES {
            return Err(format!(
                "the filter has more than {MAX_REGEXES} regular expressions (limit)"
            ));
        }
        let v = self.value()?;
        let re = regex::RegexBuilder::new(&v)
            .size_limit(REGEX_SIZE)
            .dfa_size_limit(REGEX_SIZE)
            .build()
            .map_err(|e| format!("invalid regular expression {v:?}: {e}"))?;
        let re = Arc::new(re);
        Ok(Expr::Match(
            sel,
            if negate {
                Op::NotMatches(re)
            } else {
                Op::Matches(re)
            },
        ))
    }
}

/// Parses a filter expression; the error names the unsupported part or
/// the limit it exceeds.
pub(crate) fn parse(s: &str) -> Result<Expr, String> {
    if s.len() > MAX_LEN {
        return Err(format!(
            "the filter is {} bytes, over the {MAX_LEN} byte limit",
            s.len()
        ));
    }
    let mut p = Parser {
        toks: lex(s)?,
        pos: 0,
        depth: 0,
        terms: 0,
        regexes: 0,
    };
    let e = p.or()?;
    if let Some(t) = p.peek() {
        return Err(format!("unexpected {t:?} after a complete expression"));
    }
    Ok(e)
}

/// Fields holding free-form maps (any key is a valid selector).
const MAPS: [&str; 6] = [
    "Meta",
    "NodeMeta",
    "ServiceMeta",
    "TaggedAddresses",
    "ServiceTaggedAddresses",
    "Definition",
];

/// The values `sel` reaches in `v`; `Err` for a field no entry has.
fn resolve<'a>(v: &'a Value, sel: &Selector) -> Result<Vec<&'a Value>, String> {
    let mut cur = vec![v];
    let mut in_map = false;
    for part in &sel.0 {
        let mut next = Vec::new();
        for c in cur {
            let items: Vec<&Value> = match c {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                match item {
                    Value::Object(o) => match o.get(part) {
                        Some(x) => next.push(x),
                        None if in_map => {}
                        None => return Err(format!("selector {sel}: no field {part:?}")),
                    },
                    Value::Null => {}
                    _ if in_map => {}
                    _ => {
                        return Err(format!(
                            "selector {sel}: {part:?} is not a field of a value"
                        ));
                    }
                }
            }
        }
        in_map = MAPS.contains(&part.as_str());
        cur = next;
    }
    Ok(cur)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Checks every selector of `e` against `sample` (an entry of the route's
/// shape, every optional part present), unlike [`eval`] which stops at the
/// first term that decides.
pub(crate) fn validate(e: &Expr, sample: &Value) -> Result<(), String> {
    match e {
        Expr::And(list) | Expr::Or(list) => list.iter().try_for_each(|x| validate(x, sample)),
        Expr::Not(a) => validate(a, sample),
        Expr::Match(sel, _) | Expr::In(_, sel, _) | Expr::Empty(sel, _) => {
            resolve(sample, sel).map(|_| ())
        }
    }
}

/// Whether `entry` passes `e`.
pub(crate) fn eval(e: &Expr, entry: &Value) -> Result<bool, String> {
    Ok(match e {
        Expr::And(list) => {
            for x in list {
                if !eval(x, entry)? {
                    return Ok(false);
                }
            }
            true
        }
        Expr::Or(list) => {
            for x in list {
                if eval(x, entry)? {
                    return Ok(true);
                }
            }
            false
        }
        Expr::Not(a) => !eval(a, entry)?,
        Expr::Match(sel, op) => {
            let vals = resolve(entry, sel)?;
            let leaf: Vec<&Value> = vals
                .into_iter()
                .flat_map(|v| match v {
                    Value::Array(a) => a.iter().collect::<Vec<_>>(),
                    other => vec![other],
                })
                .collect();
            match op {
                Op::Eq(want) => leaf.iter().any(|v| as_text(v) == *want),
                Op::Ne(want) => !leaf.iter().any(|v| as_text(v) == *want),
                Op::Matches(re) => leaf.iter().any(|v| re.is_match(&as_text(v))),
                Op::NotMatches(re) => !leaf.iter().any(|v| re.is_match(&as_text(v))),
            }
        }
        Expr::In(want, sel, negate) => {
            let vals = resolve(entry, sel)?;
            let found = vals.iter().any(|v| match v {
                Value::Array(a) => a.iter().any(|x| as_text(x) == *want),
                Value::Object(o) => o.contains_key(want),
                Value::String(s) => s.contains(want.as_str()),
                _ => false,
            });
            found != *negate
        }
        Expr::Empty(sel, negate) => {
            let vals = resolve(entry, sel)?;
            let empty = vals.iter().all(|v| is_empty(v));
            empty != *negate
        }
    })
}

/// Keeps the entries of `list` (a JSON array) that pass `e`.
pub(crate) fn apply(e: &Expr, list: Vec<Value>) -> Result<Vec<Value>, String> {
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        if eval(e, &v)? {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({
            "Node": {"Node": "n1", "ID": "i", "Meta": {"env": "prod"}, "Datacenter": "dc1"},
            "Service": {"Service": "web", "Tags": ["v1", "primary"], "Meta": {"version": "2"}, "Port": 80},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"CheckID": "c", "Status": "warning"}]
        })
    }

    fn yes(f: &str) -> bool {
        eval(&parse(f).unwrap(), &entry()).unwrap()
    }

    #[test]
    fn operators_clients_send() {
        assert!(yes(r#""v1" in Service.Tags"#));
        assert!(yes(r#"v1 in Service.Tags"#));
        assert!(!yes(r#""v2" in Service.Tags"#));
        assert!(yes(r#""v2" not in Service.Tags"#));
        assert!(yes(r#"Service.Tags contains "primary""#));
        assert!(yes(r#"Node.Meta.env == prod"#));
        assert!(yes(r#"Node.Meta["env"] == "prod""#));
        assert!(yes(r#"Service.Meta.version != "3""#));
        assert!(yes(r#"Service.Port == 80"#));
        assert!(yes(r#"Checks.Status == warning"#));
        assert!(yes(r#"Service.Service matches "^w.b$""#));
        assert!(yes(r#"Service.Service not matches "^db""#));
        assert!(yes(
            r#"Node.Meta is not empty and not (Service.Tags is empty)"#
        ));
        assert!(yes(r#"Node.Meta.missing is empty"#));
        assert!(yes(r#"Service.Service == db or Node.Node == n1"#));
        assert!(yes(r#""env" in Node.Meta"#));
    }

    #[test]
    fn unsupported_parts_are_named() {
        for (f, want) in [
            ("Service.Nope == x", "Nope"),
            ("Service.Service ~= x", "'~'"),
            ("Service.Service =", "'='"),
            ("Service.Service matches \"(\"", "regular expression"),
            ("(Service.Service == x", "parenthesis"),
            ("Service.Service == x extra", "unexpected"),
            ("Service.Tags is full", "empty"),
        ] {
            let e = parse(f).and_then(|e| validate(&e, &entry()));
            let msg = e.unwrap_err();
            assert!(msg.contains(want), "{f}: {msg}");
        }
    }

    #[test]
    fn every_selector_is_checked_not_only_the_deciding_one() {
        let e = parse("Node.Node == n1 or Service.Nope == x").unwrap();
        assert!(eval(&e, &entry()).unwrap());
        assert!(validate(&e, &entry()).unwrap_err().contains("Nope"));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing_through_it() {
        // Far deeper than any stack would survive if the parser followed it.
        for text in [
            format!("{}Node.Node == n1{}", "(".repeat(2000), ")".repeat(2000)),
            format!("{}Node.Node == n1", "not ".repeat(1000)),
            format!("{}Node.Node == n1", "(".repeat(5000)),
        ] {
            let text = &text[..text.len().min(MAX_LEN)];
            let msg = parse(text).unwrap_err();
            assert!(msg.contains("deeper than 32"), "{msg}");
        }
        let ok = format!("{}Node.Node == n1{}", "(".repeat(32), ")".repeat(32));
        assert!(eval(&parse(&ok).unwrap(), &entry()).unwrap());
        let nots = format!("{}Node.Node == n1", "not ".repeat(32));
        assert!(eval(&parse(&nots).unwrap(), &entry()).unwrap());
    }

    #[test]
    fn long_filters_and_many_terms_are_refused_naming_the_limit() {
        let long = format!("Node.Node == \"{}\"", "x".repeat(MAX_LEN));
        assert!(parse(&long).unwrap_err().contains("4096 byte limit"));
        let many = vec!["x==a"; MAX_TERMS + 1].join(" or ");
        assert!(many.len() <= MAX_LEN);
        assert!(parse(&many).unwrap_err().contains("terms"));
        // A long flat chain is fine: it is a list, not a deep tree.
        let chain = vec!["Node.ID != a"; MAX_TERMS / 2].join(" and ");
        assert!(eval(&parse(&chain).unwrap(), &entry()).unwrap());
    }

    #[test]
    fn huge_regular_expressions_are_refused() {
        let e = parse(r#"Node.Node matches "(a{1000}){1000}""#).unwrap_err();
        assert!(e.contains("regular expression"), "{e}");
        let e = parse(r#"Node.Node matches `\w{100}`"#).unwrap_err();
        assert!(e.contains("regular expression"), "{e}");
        let many = [r#"Node.Node matches "a""#; MAX_REGEXES + 1].join(" or ");
        assert!(parse(&many).unwrap_err().contains("regular expressions"));
        let enough = [r#"Node.Node matches "a""#; MAX_REGEXES].join(" or ");
        assert!(parse(&enough).is_ok());
    }
}
