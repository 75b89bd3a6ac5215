//! The template syntax, translated to a Rhai script.
//!
//! A template is literal text with two kinds of tags:
//! - `<% statements %>`: Rhai code run in place (loops, conditions, `let`);
//! - `<%= expression %>`: the expression's value written to the output
//!   (`()`, which is how SQL NULL reads, writes nothing).
//!
//! `<%%` writes a literal `<%`.
//!
//! **Whitespace.** Two rules decide which newlines and indentation reach
//! the output:
//! - *Standalone lines* (Mustache's rule): a line holding only statement
//!   tags and whitespace vanishes whole, its indentation and newline
//!   included; every other line keeps its newline. So a line holding only
//!   `<% for ... { %>` leaves no blank line, while
//!   `server a<% if b { %> backup<% } %>` keeps its newline and each server
//!   stays on its own line. A line with an expression tag, other text, or
//!   no tag at all is never standalone.
//! - *Trim markers*, for everything else: `<%-` (or `<%-=`) removes all
//!   whitespace before the tag, newlines included, and `-%>` all whitespace
//!   after it.
//!
//! Trim markers apply first; the standalone rule then looks at the lines
//! that remain. The reference's `todos.rhai` renders byte for byte under
//! these rules.
//!
//! The translation keeps line numbers: the generated script has exactly the
//! template's newlines, on the same lines (a newline left out of the output
//! is still written to the script, outside any string), so an error Rhai
//! reports at line N is at line N of the template. Literal text becomes
//! `__emit("...")`; an expression with the text around it
//! `__emit3("before", expr, "after")`. Out of scope: `%>` inside a string
//! in a tag ends the tag (write `"%" + ">"` there).

use std::borrow::Cow;

/// A template the translator could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("line {line}: a `<%` tag is never closed with `%>`")]
    Unclosed { line: usize },
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    /// Literal text without a newline.
    Text(Cow<'a, str>),
    /// A line break as written (`\n` or `\r\n`).
    Nl(&'a str),
    /// A line break left out of the output (still a script line).
    Gap,
    Stmt(&'a str),
    Expr(&'a str),
}

/// A tag's trim markers, by position in the token list.
struct Trim {
    at: usize,
    left: bool,
    right: bool,
}

/// Splits literal text into `Text` and `Nl` tokens.
fn push_text<'a>(toks: &mut Vec<Tok<'a>>, text: &'a str) {
    let mut rest = text;
    while let Some(i) = rest.find('\n') {
        let (line, nl_len) = if i > 0 && rest.as_bytes()[i - 1] == b'\r' {
            (&rest[..i - 1], 2)
        } else {
            (&rest[..i], 1)
        };
        if !line.is_empty() {
            toks.push(Tok::Text(Cow::Borrowed(line)));
        }
        let start = i + 1 - nl_len;
        toks.push(Tok::Nl(&rest[start..i + 1]));
        rest = &rest[i + 1..];
    }
    if !rest.is_empty() {
        toks.push(Tok::Text(Cow::Borrowed(rest)));
    }
}

fn tokenize(template: &str) -> Result<(Vec<Tok<'_>>, Vec<Trim>), SyntaxError> {
    let mut toks = Vec::new();
    let mut trims = Vec::new();
    let mut rest = template;
    let mut line = 1;
    loop {
        let Some(open) = rest.find("<%") else {
            push_text(&mut toks, rest);
            return Ok((toks, trims));
        };
        let (text, tag) = rest.split_at(open);
        push_text(&mut toks, text);
        line += text.matches('\n').count();
        if let Some(after) = tag.strip_prefix("<%%") {
            toks.push(Tok::Text(Cow::Borrowed("<%")));
            rest = after;
            continue;
        }
        let mut head = &tag[2..];
        let left = head.starts_with('-');
        if left {
            head = &head[1..];
        }
        let expression = head.starts_with('=');
        if expression {
            head = &head[1..];
        }
        let Some(close) = head.find("%>") else {
            return Err(SyntaxError::Unclosed { line });
        };
        let mut body = &head[..close];
        let right = body.ends_with('-');
        if right {
            body = &body[..body.len() - 1];
        }
        line += body.matches('\n').count();
        if left || right {
            trims.push(Trim {
                at: toks.len(),
                left,
                right,
            });
        }
        toks.push(if expression {
            Tok::Expr(body)
        } else {
            Tok::Stmt(body)
        });
        rest = &head[close + 2..];
    }
}

fn is_blank(t: &Tok<'_>) -> bool {
    matches!(t, Tok::Text(s) if s.chars().all(|c| c == ' ' || c == '\t'))
}

/// Removes the whitespace a trim marker asks for: text trimmed, line breaks
/// turned into gaps, up to the first other text or tag.
fn trim(toks: &mut [Tok<'_>], range: impl Iterator<Item = usize>, from_end: bool) {
    for i in range {
        match &mut toks[i] {
            Tok::Nl(_) | Tok::Gap => toks[i] = Tok::Gap,
            Tok::Text(s) => {
                let kept = if from_end {
                    s.trim_end_matches([' ', '\t'])
                } else {
                    s.trim_start_matches([' ', '\t'])
                };
                if kept.is_empty() {
                    toks[i] = Tok::Text(Cow::Borrowed(""));
                    continue;
                }
                let kept = kept.to_string();
                toks[i] = Tok::Text(Cow::Owned(kept));
                return;
            }
            Tok::Stmt(_) | Tok::Expr(_) => return,
        }
    }
}

/// Applies trim markers, then the standalone-line rule (module doc).
fn whitespace<'a>(mut toks: Vec<Tok<'a>>, trims: &[Trim]) -> Vec<Tok<'a>> {
    let n = toks.len();
    for t in trims {
        if t.left {
            trim(&mut toks, (0..t.at).rev(), true);
        }
        if t.right {
            trim(&mut toks, t.at + 1..n, false);
        }
    }
    toks.retain(|t| !matches!(t, Tok::Text(s) if s.is_empty()));
    let mut start = 0;
    while start < toks.len() {
        let end = toks[start..]
            .iter()
            .position(|t| matches!(t, Tok::Nl(_)))
            .map_or(toks.len(), |p| start + p + 1);
        let line = &toks[start..end];
        let standalone = line.iter().any(|t| matches!(t, Tok::Stmt(_)))
            && line
                .iter()
                .all(|t| matches!(t, Tok::Stmt(_) | Tok::Nl(_) | Tok::Gap) || is_blank(t));
        if standalone {
            for t in &mut toks[start..end] {
                if matches!(t, Tok::Nl(_)) {
                    *t = Tok::Gap;
                } else if is_blank(t) {
                    *t = Tok::Text(Cow::Borrowed(""));
                }
            }
        }
        start = end;
    }
    toks.retain(|t| !matches!(t, Tok::Text(s) if s.is_empty()));
    toks
}

/// Literal output accumulated between tags, and the script lines it owes.
#[derive(Default)]
struct Pending {
    text: String,
    lines: usize,
}

impl Pending {
    fn add(&mut self, t: &Tok<'_>) {
        match t {
            Tok::Text(s) => self.text.push_str(s),
            Tok::Nl(s) => {
                self.text.push_str(s);
                self.lines += 1;
            }
            Tok::Gap => self.lines += 1,
            Tok::Stmt(_) | Tok::Expr(_) => {}
        }
    }

    /// Writes the text as one `__emit("...")` (when there is any) and the
    /// lines it owes.
    fn flush(&mut self, out: &mut String) {
        if !self.text.is_empty() {
            out.push_str("__emit(\"");
            escape_into(out, &self.text);
            out.push_str("\");");
        }
        push_newlines(out, self.lines);
        *self = Pending::default();
    }
}

/// Translates template text to a Rhai script (see the module doc).
pub fn translate(template: &str) -> Result<String, SyntaxError> {
    let (toks, trims) = tokenize(template)?;
    let toks = whitespace(toks, &trims);
    let mut out = String::with_capacity(template.len() * 2);
    emit(&toks, &mut out);
    Ok(out)
}

/// A loop the renderer can run without interpreting its body per row:
/// `<% for v in EXPR { %>` ... `<% } %>` whose body is only literal text
/// and `<%= v.column %>` tags.
struct FastLoop<'t> {
    var: &'t str,
    expr: &'t str,
    /// Literal, column, literal, ..., literal (always odd in length).
    parts: Vec<String>,
    /// Tokens of the body (for the fallback).
    body: std::ops::Range<usize>,
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The fast loop starting at the statement token `toks[at]`, if it is one.
fn fast_loop<'t>(toks: &[Tok<'t>], at: usize) -> Option<FastLoop<'t>> {
    let Tok::Stmt(head) = &toks[at] else {
        return None;
    };
    // One line (the script keeps the template's line numbers), and an
    // expression that cannot hold a block or end a statement: anything
    // else is left to the interpreter as written.
    if head.contains('\n') {
        return None;
    }
    let head = head.trim().strip_prefix("for ")?.strip_suffix('{')?;
    let (var, expr) = head.split_once(" in ")?;
    let var = var.trim();
    if !is_ident(var)
        || expr.trim().is_empty()
        || expr.contains(['{', '}', ';'])
        || expr.contains("//")
        || expr.contains("/*")
    {
        return None;
    }
    let mut parts = vec![String::new()];
    let mut j = at + 1;
    loop {
        match toks.get(j)? {
            Tok::Text(s) => parts.last_mut()?.push_str(s),
            Tok::Nl(s) => parts.last_mut()?.push_str(s),
            Tok::Gap => {}
            Tok::Expr(e) => {
                let col = e.trim().strip_prefix(var)?.strip_prefix('.')?;
                if !is_ident(col) {
                    return None;
                }
                parts.push(col.to_string());
                parts.push(String::new());
            }
            Tok::Stmt(s) if s.trim() == "}" && !s.contains('\n') => break,
            Tok::Stmt(_) => return None,
        }
        j += 1;
    }
    Some(FastLoop {
        var,
        expr,
        parts,
        body: at + 1..j,
    })
}

/// Writes the script for `toks`.
fn emit(toks: &[Tok<'_>], out: &mut String) {
    let mut pending = Pending::default();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Stmt(_) if let Some(f) = fast_loop(toks, i) => {
                // Rows from `sql()` take the native loop (`__each`, no
                // interpretation per row); anything else iterates as
                // written. The script keeps the template's lines: the
                // fast call sits on the `for` line, the fallback body
                // holds the body's newlines.
                pending.flush(out);
                let var = format!("__rows_{i}");
                out.push_str(&format!(
                    "{{ let {var} = {}; if type_of({var}) == \"Rows\" && __each({var}, [",
                    f.expr
                ));
                for (n, p) in f.parts.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push('"');
                    escape_into(out, p);
                    out.push('"');
                }
                out.push_str(&format!("]) {{}} else {{ for {} in {var} {{", f.var));
                emit(&toks[f.body.clone()], out);
                out.push_str("} } };");
                i = f.body.end + 1;
            }
            Tok::Stmt(body) => {
                pending.flush(out);
                out.push_str(body);
                // Ends a bare statement (`<% let x = 1 %>`); an empty
                // statement after a block is harmless.
                out.push(';');
                i += 1;
            }
            Tok::Expr(body) => {
                // One call writes the text before, the value and the text
                // after (up to the next tag): a loop body like
                // `server <%= s %>;\n` costs one native call per row
                // instead of three.
                out.push_str("__emit3(\"");
                escape_into(out, &pending.text);
                out.push_str("\",");
                push_newlines(out, pending.lines);
                pending = Pending::default();
                out.push_str(body);
                i += 1;
                let mut after = Pending::default();
                while i < toks.len() && !matches!(toks[i], Tok::Stmt(_) | Tok::Expr(_)) {
                    after.add(&toks[i]);
                    i += 1;
                }
                out.push_str(",\"");
                escape_into(out, &after.text);
                out.push_str("\");");
                push_newlines(out, after.lines);
            }
            other => {
                pending.add(other);
                i += 1;
            }
        }
    }
    pending.flush(out);
}

/// Writes `text` escaped for a Rhai string literal.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

fn push_newlines(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n('\n', n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_tags_is_one_emit() {
        assert_eq!(
            translate("a \"b\"\n").unwrap(),
            "__emit(\"a \\\"b\\\"\\n\");\n"
        );
    }

    #[test]
    fn a_standalone_statement_line_vanishes_but_keeps_its_script_line() {
        let s = translate("<% let x = 1 %>\nv=<%= x %>\n").unwrap();
        assert_eq!(s, " let x = 1 ;__emit3(\"v=\",\n x ,\"\\n\");\n");
        // Indented, with \r\n: still standalone.
        let s = translate("  <% let x = 1 %>  \r\nv\n").unwrap();
        assert_eq!(s, " let x = 1 ;__emit(\"v\\n\");\n\n");
    }

    #[test]
    fn a_line_with_text_or_an_expression_keeps_its_newline() {
        let s = translate("a<% if b { %> c<% } %>\n").unwrap();
        assert_eq!(
            s,
            "__emit(\"a\"); if b { ;__emit(\" c\"); } ;__emit(\"\\n\");\n"
        );
        let s = translate("<%= x %><% y %>\n").unwrap();
        assert_eq!(s, "__emit3(\"\", x ,\"\"); y ;__emit(\"\\n\");\n");
        // No tag at all: a blank line stays.
        assert_eq!(translate("\n").unwrap(), "__emit(\"\\n\");\n");
    }

    #[test]
    fn trim_markers_remove_whitespace_on_their_side() {
        let s = translate("a  \n  <%- x %>  \n  b").unwrap();
        assert_eq!(s, "__emit(\"a\");\n x ;__emit(\"  \\n  b\");\n");
        let s = translate("a <%= x -%>\n\n  b\n").unwrap();
        assert_eq!(s, "__emit3(\"a \", x ,\"b\\n\");\n\n\n");
        let s = translate("a\n<%-= x -%>\nb").unwrap();
        assert_eq!(s, "__emit3(\"a\",\n x ,\"b\");\n");
    }

    #[test]
    fn unclosed_tag_reports_its_line() {
        assert_eq!(
            translate("a\nb\n<% if x {").unwrap_err(),
            SyntaxError::Unclosed { line: 3 }
        );
    }

    #[test]
    fn double_percent_is_a_literal_tag() {
        assert_eq!(translate("<%%= x %>").unwrap(), "__emit(\"<%= x %>\");");
        // A literal tag is text: its line is not standalone.
        assert_eq!(
            translate("<%% <% y %>\n").unwrap(),
            "__emit(\"<% \"); y ;__emit(\"\\n\");\n"
        );
    }

    #[test]
    fn script_has_the_template_line_count() {
        for t in [
            "<% for a in b { %>\n[<%= a %>]\r\n<% } %>\nend\n",
            "x <%- y -%>\n\n\nz<%= w -%>\n\n",
            "  <% a %>\n<% b\nc %>\n  d\n",
        ] {
            let s = translate(t).unwrap();
            assert_eq!(s.matches('\n').count(), t.matches('\n').count(), "{t:?}");
        }
    }
}
