//! The template syntax, translated to a Rhai script.
//!
//! A template is literal text with two kinds of tags:
//! - `<% statements %>`: Rhai code run in place (loops, conditions, `let`);
//! - `<%= expression %>`: the expression's value written to the output
//!   (`()`, which is how SQL NULL reads, writes nothing).
//!
//! A newline right after a statement tag's `%>` is dropped (`\r\n` too), so
//! a line holding only `<% for ... { %>` leaves no blank line; this is how
//! the reference's `todos.rhai` renders without blank lines. `<%%` writes a
//! literal `<%`.
//!
//! The translation keeps line numbers: the generated script has exactly the
//! template's newlines, on the same lines, so an error Rhai reports at line
//! N is at line N of the template. Literal text becomes `__emit("...")`;
//! an expression with the text around it `__emit3("before", expr, "after")`. Out of scope: `%>` inside a string in a
//! tag ends the tag (write `"%" + ">"` there).

/// A template the translator could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("line {line}: a `<%` tag is never closed with `%>`")]
    Unclosed { line: usize },
}

/// Translates template text to a Rhai script (see the module doc).
pub fn translate(template: &str) -> Result<String, SyntaxError> {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    // True right after a statement tag: one leading newline is dropped.
    let mut after_statement = false;
    let mut line = 1;
    let mut literal = String::new();
    loop {
        let Some(open) = rest.find("<%") else {
            push_literal(&mut out, &mut literal, rest, after_statement);
            flush_literal(&mut out, &mut literal);
            return Ok(out);
        };
        let (text, tag) = rest.split_at(open);
        push_literal(&mut out, &mut literal, text, after_statement);
        line += text.matches('\n').count();
        if let Some(after) = tag.strip_prefix("<%%") {
            literal.push_str("<%");
            rest = after;
            after_statement = false;
            continue;
        }
        let (expression, body_start) = if tag.starts_with("<%=") {
            (true, 3)
        } else {
            (false, 2)
        };
        let body_and_rest = &tag[body_start..];
        let Some(close) = body_and_rest.find("%>") else {
            return Err(SyntaxError::Unclosed { line });
        };
        let body = &body_and_rest[..close];
        line += body.matches('\n').count();
        let after = &body_and_rest[close + 2..];
        if expression {
            // One call writes the text before, the value and the text after
            // (up to the next tag): a loop body like `server <%= s %>;\n`
            // costs one native call per row instead of three.
            let end = after.find("<%").unwrap_or(after.len());
            let tail = &after[..end];
            out.push_str("__emit3(\"");
            let newlines = escape_into(&mut out, &literal);
            literal.clear();
            out.push_str("\",");
            push_newlines(&mut out, newlines);
            out.push_str(body);
            out.push_str(",\"");
            let newlines = escape_into(&mut out, tail);
            out.push_str("\");");
            push_newlines(&mut out, newlines);
            line += newlines;
            rest = &after[end..];
            after_statement = false;
        } else {
            flush_literal(&mut out, &mut literal);
            out.push_str(body);
            // Ends a bare statement (`<% let x = 1 %>`); an empty statement
            // after a block is harmless.
            out.push(';');
            rest = after;
            after_statement = true;
        }
    }
}

/// Writes `text` escaped for a Rhai string literal; how many newlines it
/// held.
fn escape_into(out: &mut String, text: &str) -> usize {
    let mut newlines = 0;
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => {
                out.push_str("\\n");
                newlines += 1;
            }
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    newlines
}

fn push_newlines(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n('\n', n));
}

/// Adds literal text, dropping the newline that follows a statement tag.
/// Newlines are also written to the script (outside the string) so line
/// numbers stay aligned.
fn push_literal(out: &mut String, literal: &mut String, text: &str, after_statement: bool) {
    let mut text = text;
    if after_statement {
        if let Some(t) = text.strip_prefix("\r\n") {
            text = t;
            flush_literal(out, literal);
            out.push('\n');
        } else if let Some(t) = text.strip_prefix('\n') {
            text = t;
            flush_literal(out, literal);
            out.push('\n');
        }
    }
    literal.push_str(text);
}

/// Writes the pending literal as one `__emit("...")` call followed by as
/// many newlines as it holds.
fn flush_literal(out: &mut String, literal: &mut String) {
    if literal.is_empty() {
        return;
    }
    out.push_str("__emit(\"");
    let newlines = escape_into(out, literal);
    out.push_str("\");");
    push_newlines(out, newlines);
    literal.clear();
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
    fn newline_after_statement_tag_is_dropped_but_kept_in_script_lines() {
        let s = translate("<% let x = 1 %>\nv=<%= x %>\n").unwrap();
        assert_eq!(s, " let x = 1 ;\n__emit3(\"v=\", x ,\"\\n\");\n");
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
    }

    #[test]
    fn script_has_the_template_line_count() {
        let t = "<% for a in b { %>\n[<%= a %>]\r\n<% } %>\nend\n";
        let s = translate(t).unwrap();
        assert_eq!(s.matches('\n').count(), t.matches('\n').count());
    }
}
